// The client matrix's scenarios (compat/clients/SCENARIOS.md) with KafkaJS. KafkaJS
// encodes gzip itself; snappy, lz4 and zstd need codec plugins it does not ship.
import kafkajs from "kafkajs";

const { Kafka, CompressionTypes, ConfigResourceTypes, logLevel } = kafkajs;

const BOOT = (process.env.BOOTSTRAP || "127.0.0.1:9092").split(",");
const PREFIX = process.env.PREFIX || "kafkajs";
const BASE_TS = 1_700_000_000_000;
const kafka = new Kafka({ clientId: "keel-matrix", brokers: BOOT, logLevel: logLevel.NOTHING });
const admin = kafka.admin();

class Unsupported extends Error {}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(ms, f) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await f()) return true;
    if (Date.now() > deadline) return false;
    await sleep(200);
  }
}

async function scenario(name, f) {
  try {
    await f();
    console.log(`RESULT ${name} PASS`);
  } catch (e) {
    if (e instanceof Unsupported) {
      console.log(`RESULT ${name} UNSUPPORTED ${e.message}`);
    } else {
      console.log(e);
      console.log(`RESULT ${name} FAIL ${String(e).replace(/\n/g, " ").slice(0, 300)}`);
    }
  }
}

async function create(topic, partitions) {
  await admin.createTopics({ topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }], waitForLeaders: true });
  const ok = await until(30000, async () => {
    try {
      const md = await admin.fetchTopicMetadata({ topics: [topic] });
      const ps = md.topics[0].partitions;
      return ps.length === partitions && ps.every((p) => p.leader >= 0);
    } catch {
      return false;
    }
  });
  check(ok, `${topic} never had leaders`);
}

async function producer() {
  const p = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await p.connect();
  return p;
}

// Reads `count` records from `from` ({partition: offset}) with a fresh group, seeking there.
async function read(topic, from, count) {
  const c = kafka.consumer({ groupId: `${PREFIX}-reader-${topic}-${Date.now()}`, sessionTimeout: 10000 });
  await c.connect();
  await c.subscribe({ topic, fromBeginning: true });
  const out = [];
  let ready = false;
  c.on(c.events.GROUP_JOIN, () => {
    for (const [p, o] of Object.entries(from)) c.seek({ topic, partition: Number(p), offset: String(o) });
    ready = true;
  });
  await c.run({ autoCommit: false, eachMessage: async ({ partition, message }) => {
    if (ready) out.push({ partition, ...message });
  } });
  await until(30000, () => out.length >= count);
  await c.disconnect();
  return out;
}

async function adminScenario() {
  const topic = `${PREFIX}-admin`;
  await create(topic, 3);
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  check(md.topics[0].partitions.length === 3, `${md.topics[0].partitions.length} partitions`);
  await admin.alterConfigs({ validateOnly: false, resources: [{ type: ConfigResourceTypes.TOPIC, name: topic,
    configEntries: [{ name: "retention.ms", value: "3600000" }] }] });
  // A changed config reaches every broker soon after it is committed, not at once.
  let v;
  await until(15000, async () => {
    const d = await admin.describeConfigs({ includeSynonyms: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ["retention.ms"] }] });
    v = d.resources[0].configEntries.find((e) => e.configName === "retention.ms")?.configValue;
    return v === "3600000";
  });
  check(v === "3600000", `retention.ms = ${v}`);
  check((await admin.listTopics()).includes(topic), "not listed");
  await admin.deleteTopics({ topics: [topic] });
  check(await until(30000, async () => !(await admin.listTopics()).includes(topic)), "still listed after delete");
}

async function produce() {
  const topic = `${PREFIX}-produce`;
  await create(topic, 3);
  const p = await producer();
  const messages = [];
  for (let i = 0; i < 30; i++) {
    messages.push({ key: `key-${i % 5}`, value: `value-${i}`, headers: { h1: `a${i}`, h2: "b" }, timestamp: String(BASE_TS + i) });
  }
  await p.send({ topic, acks: -1, messages });
  await p.disconnect();
  const got = await read(topic, { 0: 0, 1: 0, 2: 0 }, 30);
  check(got.length === 30, `read ${got.length} of 30`);
  const keyPart = {};
  const last = {};
  for (const r of got) {
    const i = Number(r.value.toString().split("-")[1]);
    const k = r.key.toString();
    check(k === `key-${i % 5}`, `key of ${i}`);
    check(Object.keys(r.headers).length === 2 && r.headers.h1.toString() === `a${i}` && r.headers.h2.toString() === "b", `headers of ${i}`);
    check(Number(r.timestamp) === BASE_TS + i, `timestamp of ${i}: ${r.timestamp}`);
    check((keyPart[k] ??= r.partition) === r.partition, `key ${k} in two partitions`);
    check((last[k] ?? -1) < i, `key ${k} out of order`);
    last[k] = i;
  }
}

async function compression() {
  const codecs = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP };
  for (const name of Object.keys(codecs)) {
    const topic = `${PREFIX}-codec-${name}`;
    await create(topic, 1);
    const p = await producer();
    const values = [];
    for (let i = 0; i < 10; i++) values.push(`${name}-${i}-`.repeat(20));
    await p.send({ topic, acks: -1, compression: codecs[name], messages: values.map((value) => ({ partition: 0, value })) });
    await p.disconnect();
    const got = await read(topic, { 0: 0 }, 10);
    check(JSON.stringify(got.map((r) => r.value.toString())) === JSON.stringify(values), `${name}: read back ${got.length} records, not the 10 sent`);
  }
  throw new Unsupported("none and gzip pass; snappy, lz4 and zstd need codec plugins KafkaJS does not ship");
}

async function offsets() {
  const topic = `${PREFIX}-offsets`;
  await create(topic, 1);
  const p = await producer();
  const messages = [];
  for (let i = 0; i < 20; i++) messages.push({ partition: 0, value: `r${i}`, timestamp: String(BASE_TS + 1000 * i) });
  await p.send({ topic, acks: -1, messages });
  await p.disconnect();
  const o = (await admin.fetchTopicOffsets(topic))[0];
  check(o.low === "0" && o.high === "20", `earliest/latest ${o.low}/${o.high}`);
  const t = (await admin.fetchTopicOffsetsByTimestamp(topic, BASE_TS + 7000))[0];
  check(t.offset === "7", `offset for timestamp = ${t.offset}`);
  const got = await read(topic, { 0: 12 }, 8);
  const offs = got.map((r) => Number(r.offset));
  check(JSON.stringify(offs) === JSON.stringify([12, 13, 14, 15, 16, 17, 18, 19]), `from 12: ${offs}`);
}

// A group member that commits every record it reads and tracks its assignment.
async function member(topic, gid) {
  const c = kafka.consumer({ groupId: gid, sessionTimeout: 10000, heartbeatInterval: 1000 });
  const m = { c, owned: 0, seen: new Set() };
  c.on(c.events.GROUP_JOIN, (e) => { m.owned = (e.payload.memberAssignment[topic] || []).length; });
  await c.connect();
  await c.subscribe({ topic, fromBeginning: true });
  await c.run({ autoCommit: false, eachMessage: async ({ partition, message }) => {
    m.seen.add(message.value.toString());
    await c.commitOffsets([{ topic, partition, offset: String(Number(message.offset) + 1) }]);
  } });
  return m;
}

function names(tag, n) {
  return new Set(Array.from({ length: n }, (_, i) => `${tag}${i}`));
}

function equal(a, b) {
  return a.size === b.size && [...a].every((x) => b.has(x));
}

async function send(p, topic, tag, n) {
  await p.send({ topic, acks: -1, messages: Array.from({ length: n }, (_, i) => ({ partition: i % 4, value: `${tag}${i}` })) });
}

async function group() {
  const topic = `${PREFIX}-group`;
  const gid = `${PREFIX}-group`;
  await create(topic, 4);
  const p = await producer();
  const a = await member(topic, gid);
  const b = await member(topic, gid);
  check(await until(60000, () => a.owned > 0 && b.owned > 0 && a.owned + b.owned === 4), `assignments ${a.owned} / ${b.owned}`);
  check(a.seen.size + b.seen.size === 0, "a record before any was produced");
  await send(p, topic, "g", 40);
  await until(60000, () => new Set([...a.seen, ...b.seen]).size >= 40);
  check(equal(new Set([...a.seen, ...b.seen]), names("g", 40)), "two members did not read the 40");
  await a.c.disconnect();
  await until(60000, () => b.owned === 4);
  check(b.owned === 4, `remaining member has ${b.owned} partitions`);
  b.seen.clear();
  await send(p, topic, "h", 20);
  await until(60000, () => [...names("h", 20)].every((x) => b.seen.has(x)));
  check(equal(b.seen, names("h", 20)), `after rebalance read ${[...b.seen].sort()}`);
  await b.c.disconnect();
  await send(p, topic, "j", 10);
  const c = await member(topic, gid);
  await until(60000, () => c.seen.size >= 10);
  await sleep(2000); // a window in which a re-read of older records would show
  await c.c.disconnect();
  await p.disconnect();
  check(equal(c.seen, names("j", 10)), `resumed member read ${[...c.seen].sort()}`);
}

async function groupsAdmin() {
  const gid = `${PREFIX}-group`;
  const { groups } = await admin.listGroups();
  check(groups.some((g) => g.groupId === gid), "group not listed");
  const d = (await admin.describeGroups([gid])).groups[0];
  check(d.state === "Empty" && d.protocolType === "consumer", `state ${d.state} protocol type ${d.protocolType}`);
  const offs = await admin.fetchOffsets({ groupId: gid, topics: [gid] });
  const ps = offs[0].partitions;
  const sum = ps.reduce((s, x) => s + Number(x.offset), 0);
  check(ps.length === 4 && sum === 70, `committed ${JSON.stringify(ps)}`);
}

await admin.connect();
await scenario("admin", adminScenario);
await scenario("produce", produce);
await scenario("compression", compression);
await scenario("offsets", offsets);
await scenario("group", group);
await scenario("groups_admin", groupsAdmin);
await admin.disconnect();
process.exit(0);
