// Scenarios for sluice's Mongo listener that need the driver on both sides: read-preference
// routing against two backends holding different data, and the cache under mixed load.
//   node mongo_scenarios.js routing SLUICE_URI PRIMARY_URI SECONDARY_URI
//   node mongo_scenarios.js cache SLUICE_URI CLIENTS OPERATIONS
//   node mongo_scenarios.js refused SLUICE_URI
//   node mongo_scenarios.js pooled SLUICE_URI DB
// Prints one JSON line; exits non-zero on a failed check.
const assert = require("node:assert/strict");
const { MongoClient, ReadPreference } = require("mongodb");

const opts = { serverSelectionTimeoutMS: 5000, retryWrites: false, retryReads: false };

async function routing(sluiceUri, primaryUri, secondaryUri) {
  const primary = new MongoClient(primaryUri, { ...opts, directConnection: true });
  const secondary = new MongoClient(secondaryUri, { ...opts, directConnection: true });
  const sluice = new MongoClient(sluiceUri, opts);
  await Promise.all([primary.connect(), secondary.connect(), sluice.connect()]);
  const out = {};
  // Each backend holds its own name; the answer says where a read went.
  for (const [client, name] of [[primary, "primary"], [secondary, "secondary"]]) {
    const c = client.db("routing").collection("where");
    await c.deleteMany({});
    await c.insertOne({ _id: 1, server: name });
    const many = client.db("routing").collection("rows");
    await many.deleteMany({});
    const rows = [];
    for (let i = 0; i < 300; i++) rows.push({ _id: i, server: name });
    await many.insertMany(rows);
  }
  const where = async (readPreference) => {
    const doc = await sluice.db("routing").collection("where").findOne({ _id: 1 }, { readPreference });
    return doc.server;
  };
  out.primary = await where(ReadPreference.PRIMARY);
  out.secondaryPreferred = await where(ReadPreference.SECONDARY_PREFERRED);
  out.secondary = await where(ReadPreference.SECONDARY);
  out.primaryPreferred = await where(ReadPreference.PRIMARY_PREFERRED);
  assert.equal(out.primary, "primary");
  assert.equal(out.secondaryPreferred, "secondary");
  assert.equal(out.secondary, "secondary");
  assert.equal(out.primaryPreferred, "primary");
  // Tags: the secondary is {dc: "east"}.
  out.tagEast = await where(new ReadPreference("secondary", [{ dc: "east" }]));
  assert.equal(out.tagEast, "secondary");
  await assert.rejects(where(new ReadPreference("secondary", [{ dc: "west" }])), (e) => e.code === 133);
  out.tagWestFallsBack = await where(new ReadPreference("secondaryPreferred", [{ dc: "west" }]));
  assert.equal(out.tagWestFallsBack, "primary");
  // maxStalenessSeconds: this secondary reports no optime, so its lag is unknown and it is not
  // eligible under a bound (secondaryPreferred falls back to the primary).
  out.boundedStaleness = await where(new ReadPreference("secondaryPreferred", null, { maxStalenessSeconds: 10 }));
  assert.equal(out.boundedStaleness, "primary");
  // Count, distinct and aggregate follow the read preference too.
  const rows = sluice.db("routing").collection("rows");
  const secondaryRows = await rows.countDocuments({ server: "secondary" }, { readPreference: "secondaryPreferred" });
  assert.equal(secondaryRows, 300);
  const agg = await rows
    .aggregate([{ $group: { _id: "$server", n: { $sum: 1 } } }], { readPreference: "secondaryPreferred" })
    .toArray();
  assert.deepEqual(agg, [{ _id: "secondary", n: 300 }]);
  // A cursor opened on the secondary is continued there: every getMore batch is the secondary's.
  const cursor = rows.find({}, { readPreference: "secondaryPreferred", batchSize: 50 });
  let n = 0;
  for await (const d of cursor) {
    assert.equal(d.server, "secondary");
    n++;
  }
  assert.equal(n, 300);
  out.cursorOnSecondary = n;
  // Writes go to the primary, whatever the client's preference for reads.
  const writer = new MongoClient(sluiceUri, { ...opts, readPreference: "secondaryPreferred" });
  await writer.connect();
  await writer.db("routing").collection("written").insertOne({ _id: "w1" });
  assert.equal(await primary.db("routing").collection("written").countDocuments({ _id: "w1" }), 1);
  assert.equal(await secondary.db("routing").collection("written").countDocuments({ _id: "w1" }), 0);
  out.writeLandedOn = "primary";
  await writer.db("routing").collection("written").deleteMany({});
  await Promise.all([writer.close(), primary.close(), secondary.close(), sluice.close()]);
  console.log(JSON.stringify(out));
}

// Clients each own one counter document and also read everyone's. A read of one's own counter
// must show the last value written (read-your-writes through the cache); any read of a counter
// must never go backwards from what that client saw before. Repeated identical finds are
// what the cache serves.
async function cacheLoad(sluiceUri, clients, operations) {
  const setup = new MongoClient(sluiceUri, opts);
  await setup.connect();
  const coll = setup.db("shop").collection("counters");
  await coll.deleteMany({});
  const docs = [];
  for (let i = 0; i < clients; i++) docs.push({ _id: i, value: 0 });
  await coll.insertMany(docs);
  let stale = 0;
  let reads = 0;
  let writes = 0;
  const staleExamples = [];
  const perClient = Math.floor(operations / clients);
  const worker = async (me) => {
    const client = new MongoClient(sluiceUri, { ...opts, maxPoolSize: 2 });
    await client.connect();
    const c = client.db("shop").collection("counters");
    let mine = 0;
    const seen = new Array(clients).fill(0);
    for (let op = 0; op < perClient; op++) {
      const kind = op % 4;
      if (kind === 0) {
        mine++;
        await c.updateOne({ _id: me }, { $set: { value: mine } });
        writes++;
      } else if (kind === 1) {
        const d = await c.findOne({ _id: me });
        reads++;
        if (d.value !== mine) {
          stale++;
          if (staleExamples.length < 5) staleExamples.push({ client: me, read: d.value, wrote: mine });
        }
      } else {
        const all = await c.find({}).sort({ _id: 1 }).toArray();
        reads++;
        for (const d of all) {
          const expected = d._id === me ? mine : seen[d._id];
          if (d._id === me ? d.value !== mine : d.value < expected) {
            stale++;
            if (staleExamples.length < 5) staleExamples.push({ client: me, doc: d._id, read: d.value, expected });
          }
          seen[d._id] = Math.max(seen[d._id], d.value);
        }
      }
    }
    await client.close();
  };
  const workers = [];
  for (let i = 0; i < clients; i++) workers.push(worker(i));
  await Promise.all(workers);
  await setup.close();
  console.log(JSON.stringify({ operations: perClient * clients, reads, writes, stale, staleExamples }));
}

// What the driver gets for commands the listener does not open (administration, users,
// other clients' operations), and that ordinary work goes on around them.
async function refused(sluiceUri) {
  const client = new MongoClient(sluiceUri, opts);
  await client.connect();
  const admin = client.db("admin");
  const outcome = async (promise) => {
    try {
      await promise;
      return "ok";
    } catch (e) {
      return { code: e.code, codeName: e.codeName, message: e.message };
    }
  };
  const out = {};
  out.shutdown = await outcome(admin.command({ shutdown: 1 }));
  out.createUser = await outcome(admin.command({ createUser: "eve", pwd: "pw", roles: ["root"] }));
  out.currentOp = await outcome(admin.aggregate([{ $currentOp: { allUsers: true } }]).toArray());
  out.currentOpCommand = await outcome(admin.command({ currentOp: 1 }));
  out.fsync = await outcome(admin.command({ fsync: 1 }));
  out.replSetStepDown = await outcome(admin.command({ replSetStepDown: 60 }));
  const sessions = client.db("config").collection("system.sessions");
  out.configSessions = await outcome(sessions.find().toArray());
  const c = client.db("refused").collection("c");
  await c.deleteMany({});
  await c.insertOne({ _id: 1 });
  assert.equal(await c.countDocuments({}), 1);
  assert.deepEqual(await admin.command({ ping: 1 }), { ok: 1 });
  out.driverWorkStillWorks = true;
  await client.close();
  console.log(JSON.stringify(out));
}

// One client, a pool of four connections, eight cursors and eight transactions at once: the
// driver sends a cursor's getMores and a transaction's commands over whichever pooled connection
// is free (with the session's lsid). Command monitoring tells which connections each used.
async function pooled(sluiceUri, dbName) {
  const client = new MongoClient(sluiceUri, { ...opts, maxPoolSize: 4, monitorCommands: true });
  const cursorConns = new Map(); // cursor id -> connection ids
  const txnConns = new Map(); // lsid + txnNumber -> connection ids
  const findConn = new Map(); // requestId -> connection id
  const note = (map, key, conn) => map.set(key, (map.get(key) || new Set()).add(conn));
  client.on("commandStarted", (e) => {
    if (e.commandName === "find") findConn.set(e.requestId, e.connectionId);
    if (e.commandName === "getMore") note(cursorConns, String(e.command.getMore), e.connectionId);
    if (e.command.autocommit === false)
      note(txnConns, `${e.command.lsid.id.toString("hex")}/${e.command.txnNumber}`, e.connectionId);
  });
  client.on("commandSucceeded", (e) => {
    if (e.commandName === "find" && e.reply.cursor && String(e.reply.cursor.id) !== "0")
      note(cursorConns, String(e.reply.cursor.id), findConn.get(e.requestId));
  });
  await client.connect();
  const db = client.db(dbName);
  const rows = db.collection("rows");
  await rows.deleteMany({});
  const docs = [];
  for (let i = 0; i < 300; i++) docs.push({ _id: i });
  await rows.insertMany(docs);
  // A collection per transaction: jongodb 0.1.6 loses committed updates when concurrent
  // transactions commit to one collection (seen without sluice too, 32 transactions at once).
  const accountsOf = (i) => db.collection(`accounts${i}`);
  for (let i = 0; i < 8; i++) {
    await accountsOf(i).deleteMany({});
    await accountsOf(i).insertOne({ _id: i, n: 0 });
  }
  const readAll = async () => {
    let n = 0;
    for await (const d of rows.find({}).sort({ _id: 1 }).batchSize(10)) {
      assert.equal(d._id, n);
      n++;
    }
    assert.equal(n, 300);
  };
  const transfer = async (i) => {
    const session = client.startSession();
    await session.withTransaction(async () => {
      for (let k = 0; k < 3; k++) {
        await accountsOf(i).updateOne({ _id: i }, { $inc: { n: 1 } }, { session });
        await rows.findOne({ _id: k }, { session });
      }
    });
    await session.endSession();
  };
  await Promise.all([...Array(8).keys()].flatMap((i) => [readAll(), transfer(i)]));
  for (let i = 0; i < 8; i++) assert.equal((await accountsOf(i).findOne({ _id: i })).n, 3);
  const across = (map) => [...map.values()].filter((conns) => conns.size > 1).length;
  const out = {
    cursors: cursorConns.size,
    cursorsAcrossConnections: across(cursorConns),
    transactions: txnConns.size,
    transactionsAcrossConnections: across(txnConns),
  };
  await client.close();
  console.log(JSON.stringify(out));
}

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === "routing") return routing(...args);
  if (mode === "cache") return cacheLoad(args[0], Number(args[1]), Number(args[2]));
  if (mode === "refused") return refused(...args);
  if (mode === "pooled") return pooled(...args);
  throw new Error(`unknown mode ${mode}`);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
