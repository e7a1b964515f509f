// The Node MongoDB driver against sluice's Mongo listener: every acceptance operation of issue 8,
// each checked against what it must return. Usage: node mongo_driver.js URI DB
// Prints one JSON line of figures; exits non-zero on the first failed check.
const assert = require("node:assert/strict");
const { MongoClient } = require("mongodb");

async function main() {
  const [uri, dbName] = process.argv.slice(2);
  const client = new MongoClient(uri);  // a plain URI, the driver's defaults (retryable writes)
  await client.connect();
  const db = client.db(dbName);
  const figures = {};

  const hello = await db.admin().command({ hello: 1 });
  assert.equal(hello.msg, "isdbgrid");
  assert.equal(hello.maxMessageSizeBytes, 48000000);
  assert.deepEqual(await db.command({ ping: 1 }), { ok: 1 });

  const coll = db.collection("items");
  await coll.deleteMany({});
  const one = await coll.insertOne({ _id: 0, name: "zero", n: 0, group: "g0" });
  assert.equal(one.insertedId, 0);
  const docs = [];
  for (let i = 1; i <= 1000; i++) docs.push({ _id: i, name: `item${i}`, n: i, group: `g${i % 5}` });
  const many = await coll.insertMany(docs);  // 1 000 documents: one OP_MSG document sequence
  assert.equal(many.insertedCount, 1000);
  figures.inserted = 1 + many.insertedCount;

  const top = await coll.find({ n: { $gte: 500 } }).sort({ n: -1 }).limit(5).toArray();
  assert.deepEqual(top.map((d) => d.n), [1000, 999, 998, 997, 996]);

  // 20 000 documents read back through getMore batches.
  const big = db.collection("big");
  await big.deleteMany({});
  for (let start = 0; start < 20000; start += 5000) {
    const batch = [];
    for (let i = start; i < start + 5000; i++) batch.push({ _id: i, v: i * 2 });
    await big.insertMany(batch);
  }
  let seen = 0;
  let sum = 0;
  const cursor = big.find({}).sort({ _id: 1 }).batchSize(1000);
  for await (const d of cursor) {
    assert.equal(d._id, seen);
    seen++;
    sum += d.v;
  }
  assert.equal(seen, 20000);
  assert.equal(sum, 2 * (19999 * 20000) / 2);
  figures.iterated = seen;
  // A cursor closed early: killCursors goes to the server that owns it.
  const early = big.find({}).batchSize(100);
  await early.next();
  await early.close();

  const upd = await coll.updateMany({ group: "g1" }, { $set: { flagged: true } });
  assert.equal(upd.matchedCount, 200);
  assert.equal(upd.modifiedCount, 200);
  assert.equal(await coll.countDocuments({ flagged: true }), 200);
  const del = await coll.deleteMany({ group: "g2" });
  assert.equal(del.deletedCount, 200);
  assert.equal(await coll.countDocuments({}), 801);

  const groups = await coll
    .aggregate([{ $match: { n: { $gt: 0 } } }, { $group: { _id: "$group", c: { $sum: 1 } } }, { $sort: { _id: 1 } }])
    .toArray();
  assert.deepEqual(groups, [
    { _id: "g0", c: 200 },
    { _id: "g1", c: 200 },
    { _id: "g3", c: 200 },
    { _id: "g4", c: 200 },
  ]);
  const count = await db.command({ count: "items", query: { group: "g3" } });
  assert.equal(count.n, 200);
  const distinct = (await coll.distinct("group")).sort();
  assert.deepEqual(distinct, ["g0", "g1", "g3", "g4"]);

  // Transactions: one commits, one aborts.
  const accounts = db.collection("accounts");
  await accounts.deleteMany({});
  await accounts.insertMany([{ _id: "a", bal: 100 }, { _id: "b", bal: 0 }]);
  const s1 = client.startSession();
  await s1.withTransaction(async () => {
    await accounts.updateOne({ _id: "a" }, { $inc: { bal: -30 } }, { session: s1 });
    await accounts.updateOne({ _id: "b" }, { $inc: { bal: 30 } }, { session: s1 });
  });
  await s1.endSession();
  assert.deepEqual(await accounts.find({}).sort({ _id: 1 }).toArray(), [{ _id: "a", bal: 70 }, { _id: "b", bal: 30 }]);
  const s2 = client.startSession();
  s2.startTransaction();
  await accounts.updateOne({ _id: "a" }, { $inc: { bal: -50 } }, { session: s2 });
  await accounts.insertOne({ _id: "c", bal: 50 }, { session: s2 });
  await s2.abortTransaction();
  await s2.endSession();
  assert.deepEqual(await accounts.find({}).sort({ _id: 1 }).toArray(), [{ _id: "a", bal: 70 }, { _id: "b", bal: 30 }]);
  figures.transactions = "commit+abort";

  // A server error comes back as the server sent it.
  await assert.rejects(coll.insertOne({ _id: 1 }), (e) => e.code === 11000);

  await client.close();

  // Credentials are refused with a message that says why (a pooled connection must not carry
  // one client's identity to the next).
  const withAuth = new MongoClient(uri.replace("mongodb://", "mongodb://someone:pw@"), {
    serverSelectionTimeoutMS: 5000,
  });
  await assert.rejects(withAuth.connect(), (e) => /does not authenticate clients/.test(e.message));
  await withAuth.close();
  figures.credentialsRefused = true;
  console.log(JSON.stringify(figures));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
