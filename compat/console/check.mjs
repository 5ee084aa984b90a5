// Runs the web console's own script (crates/keel-broker/src/console/index.html, as
// `keel serve` serves it at /console) in Node against a running Keel, with a minimal
// stand-in for the page's elements, and checks what each page shows.
//   node check.mjs http://127.0.0.1:9644 TOPIC
import assert from "node:assert/strict";

const [base, topic] = process.argv.slice(2);
const html = await (await fetch(base + "/console")).text();
const js = html.slice(html.indexOf("<script>") + 8, html.indexOf("</script>"));
const realFetch = globalThis.fetch;

async function show(hash) {
  const els = {};
  const el = (id) => (els[id] ??= { id, innerHTML: "", textContent: "" });
  globalThis.document = { getElementById: el, querySelectorAll: () => [], addEventListener() {} };
  globalThis.location = { hash };
  globalThis.window = { addEventListener() {} };
  globalThis.setInterval = () => {};
  let pending = 0;
  globalThis.fetch = async (path, opts) => {
    assert.ok(path.startsWith("/api/v1/"), `the console fetched ${path}`);
    pending++;
    try { return await realFetch(base + path, opts); } finally { pending--; }
  };
  new Function(js)();
  const deadline = Date.now() + 5000;
  while ((el("page").innerHTML === "" || pending > 0) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(el("error").textContent, "", `${hash || "#/"}: ${el("error").textContent}`);
  return el("page").innerHTML;
}

const overview = await show("");
assert.match(overview, /Nodes alive<\/small><b class="ok">1 \/ 1</);
assert.match(overview, /<th>Node<\/th>/);
const topics = await show("#/topics");
assert.ok(topics.includes(`href="#/topics/${topic}"`), topics);
const one = await show(`#/topics/${topic}`);
const rows = one.match(/<tr><td class="num"><a href="#\/topics\/[^/]+\/\d+">\d+<\/a><\/td>/g) ?? [];
assert.equal(rows.length, 3, one);
assert.match(one, /<td class="num">4<\/td><td class="num">[\d.]+ (B|KiB)<\/td><\/tr>/, "the produced records' high watermark");
// The message browser: partition 1's four records, in order, as text; partition 2's record
// with its key, JSON value (pretty-printed) and header, then the same bytes in hex.
const p1 = await show(`#/topics/${topic}/1?offset=0`);
const values = [...p1.matchAll(/<tr><td class="num">(\d+)<\/td><td><small>[^<]*<\/small><\/td><td><small>null<\/small><\/td><td>(v\d)<\/td>/g)];
assert.deepEqual(values.map((m) => [m[1], m[2]]), [["0", "v1"], ["1", "v2"], ["2", "v3"], ["3", "v4"]], p1);
const p2 = await show(`#/topics/${topic}/2?format=json`);
assert.ok(p2.includes("<td>order-7 <small>not JSON</small></td>"), `the key, shown as text: ${p2}`);
assert.ok(p2.includes("&quot;total&quot;: 42"), `the JSON value, pretty-printed: ${p2}`);
assert.ok(p2.includes("source=web"), `the header: ${p2}`);
const hex = await show(`#/topics/${topic}/2?format=hex`);
assert.ok(hex.includes("6f 72 64 65 72 2d 37"), `the key in hex: ${hex}`);
const late = await show(`#/topics/${topic}/1?timestamp=${Date.now() + 3600000}`);
assert.match(late, /No records here/, "nothing is written an hour from now");
const groups = await show("#/groups");
assert.match(groups, /<h3>console-reader <small>Empty, lag 1<\/small><\/h3>/, groups);
const chaos = await show("#/chaos");
assert.ok(chaos.includes('href="/api/v1/chaos/run-42/report"'), chaos);
assert.match(chaos, /<td class="ok">VALID<\/td>/, "the chaos run's verdict");
const report = await realFetch(base + "/api/v1/chaos/run-42/report");
assert.equal(report.status, 200);
assert.match(report.headers.get("content-type"), /text\/html/);
assert.ok((await report.text()).includes("42"), "the report names its seed");
assert.equal((await realFetch(base + "/api/v1/chaos/..%2Fdata/report")).status, 404, "only run directories are served");
const moves = await show("#/moves");
assert.match(moves, /No partition is moving/);
console.log("console: overview, topics, topic, message browser, groups, moves and chaos runs pages render from the admin API");
