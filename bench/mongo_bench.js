// One timed run of the Mongo bench against one URI: CLIENTS concurrent loops of findOne by a
// random _id (out of 1 000) on COLLECTION for SECONDS. Prints {ops, ops_per_s, p50_ms, p99_ms}.
//   node mongo_bench.js URI COLLECTION SECONDS CLIENTS [--setup]
// --setup (re)creates bench.items and bench.cached with 1 000 documents each first.
const { MongoClient } = require("mongodb");

async function main() {
  const [uri, collection, seconds, clients, setup] = process.argv.slice(2);
  const client = new MongoClient(uri, { maxPoolSize: Number(clients) + 1 });
  await client.connect();
  const db = client.db("bench");
  if (setup === "--setup") {
    for (const name of ["items", "cached"]) {
      const c = db.collection(name);
      await c.deleteMany({});
      const docs = [];
      for (let i = 0; i < 1000; i++) docs.push({ _id: i, name: `item ${i}`, price: i * 1.25, tags: ["a", "b"] });
      await c.insertMany(docs);
    }
  }
  const c = db.collection(collection);
  const latencies = [];
  const end = Date.now() + Number(seconds) * 1000;
  const loop = async () => {
    while (Date.now() < end) {
      const t0 = process.hrtime.bigint();
      const d = await c.findOne({ _id: Math.floor(Math.random() * 1000) });
      if (!d) throw new Error("missing document");
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  };
  const started = Date.now();
  await Promise.all(Array.from({ length: Number(clients) }, loop));
  const elapsed = (Date.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  await client.close();
  console.log(JSON.stringify({ ops: latencies.length, ops_per_s: latencies.length / elapsed, p50_ms: q(0.5), p99_ms: q(0.99) }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
