// node-postgres through sluice in transaction pooling (run by test_transaction_pooling.py):
// named statements reused across many transactions, per-client SET search_path and
// statement_timeout, COPY in and out, and cancel of pg_sleep(10). Exits non-zero on any failure.
'use strict'
const { Client } = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const assert = require('assert')

const config = JSON.parse(process.argv[2]) // {host, port, user, password, database}
const CLIENTS = 8
const ROUNDS = 40

async function connect () {
  const c = new Client(config)
  await c.connect()
  return c
}

async function namedStatementsAndSettings () {
  const clients = await Promise.all(Array.from({ length: CLIENTS }, connect))
  // Each client its own search_path and statement_timeout; many more clients than servers.
  await Promise.all(clients.map(async (c, i) => {
    await c.query(`SET search_path TO node_${i}, public`)
    await c.query(`SET statement_timeout = '${(i + 1) * 1000}ms'`)
  }))
  await Promise.all(clients.map(async (c, i) => {
    for (let round = 0; round < ROUNDS; round++) {
      // A named statement: parsed once by this client, reused on whichever server it gets.
      const r = await c.query({
        name: 'settings',
        text: 'SELECT current_setting($1) AS path, current_setting($2) AS timeout, $3::int AS n',
        values: ['search_path', 'statement_timeout', round]
      })
      assert.strictEqual(r.rows[0].path, `node_${i}, public`)
      assert.strictEqual(r.rows[0].timeout, `${i + 1}s`)
      assert.strictEqual(r.rows[0].n, round)
      if (round % 10 === 0) { // and inside explicit transactions too
        await c.query('BEGIN')
        const t = await c.query({ name: 'in-tx', text: 'SELECT $1::text AS me', values: [`c${i}`] })
        assert.strictEqual(t.rows[0].me, `c${i}`)
        await c.query('COMMIT')
      }
    }
  }))
  await Promise.all(clients.map(c => c.end()))
  return CLIENTS * ROUNDS
}

async function copyInOut () {
  const c = await connect()
  const table = `node_copy_${process.pid}`
  await c.query(`DROP TABLE IF EXISTS ${table}`)
  await c.query(`CREATE TABLE ${table} (id int, label text)`)
  const lines = Array.from({ length: 5000 }, (_, i) => `${i}\tlabel ${i} ✓\n`)
  await pipeline(Readable.from(lines), c.query(copyFrom(`COPY ${table} FROM STDIN`)))
  const count = await c.query(`SELECT count(*)::int AS n FROM ${table}`)
  assert.strictEqual(count.rows[0].n, 5000)
  const chunks = []
  await pipeline(c.query(copyTo(`COPY ${table} TO STDOUT`)), new Writable({
    write (chunk, _enc, done) { chunks.push(chunk); done() }
  }))
  assert.strictEqual(Buffer.concat(chunks).toString(), lines.join(''))
  await c.query(`DROP TABLE ${table}`)
  await c.end()
}

async function cancelSleep () {
  const victim = await connect()
  const started = Date.now()
  const query = victim.query('SELECT pg_sleep(10)')
  const sleeping = query.then(() => null, e => e)
  await new Promise(resolve => setTimeout(resolve, 300))
  const canceller = new Client(config)
  canceller.cancel(victim, victim.activeQuery)
  const err = await sleeping
  const elapsed = Date.now() - started
  assert.ok(err, 'pg_sleep(10) was not cancelled')
  assert.strictEqual(err.code, '57014')
  assert.ok(elapsed < 1300, `cancel took ${elapsed} ms`)
  // The connection is usable afterwards.
  const r = await victim.query('SELECT 1 AS one')
  assert.strictEqual(r.rows[0].one, 1)
  await victim.end()
  return elapsed - 300
}

async function main () {
  const queries = await namedStatementsAndSettings()
  await copyInOut()
  const cancelMs = await cancelSleep()
  console.log(JSON.stringify({ ok: true, named_queries: queries, cancel_ms: cancelMs }))
}

main().catch(e => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(1)
})
