// The web console in a real browser: Debian's Chromium, driven by Playwright
// (playwright-core), against a running Keel. It opens the console, goes from page to page
// by clicking its links and submitting its form as a user would, checks what each page
// shows, checks that the pages fetched nothing but the node's own admin API and raised no
// script error, and saves a screenshot of each page.
//   node browser.mjs http://127.0.0.1:9644 TOPIC SCREENSHOT_DIR
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(process.env.PLAYWRIGHT_FROM ?? import.meta.url);
const { chromium } = require("playwright-core");

const [base, topic, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // No sandbox (CI runs as root); no background connections to Google's services.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 420 } });
  const elsewhere = [];
  page.on("request", (r) => { if (!r.url().startsWith(base + "/")) elsewhere.push(r.url()); });
  page.on("pageerror", (e) => failures.push(`script error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") failures.push(`console error: ${m.text()}`); });
  page.on("response", (r) => { if (r.status() >= 400) failures.push(`HTTP ${r.status()} for ${r.url()}`); });
  const text = () => page.locator("#page").innerText();
  const shot = (name) => page.screenshot({ path: `${shots}/console-${name}.png`, fullPage: true });
  const noError = async (where) => assert.equal(await page.locator("#error").innerText(), "", where);

  await page.goto(base + "/console");
  await page.getByText("Nodes alive").waitFor();
  await noError("overview");
  assert.match(await page.locator(".card", { hasText: "Nodes alive" }).innerText(), /1 \/ 1/);
  assert.match(await page.locator("table").first().innerText(), /alive/);
  await shot("overview");

  await page.getByRole("link", { name: "Topics", exact: true }).click();
  await page.getByRole("link", { name: topic, exact: true }).click();
  await page.getByRole("heading", { name: new RegExp(`^${topic}`) }).waitFor();
  await noError("topic");
  // Three partitions; partition 1 holds the four records.
  assert.equal(await page.locator("main table tr").count(), 4, await text());
  await shot("topic");

  await page.locator("main table").getByRole("link", { name: "2", exact: true }).click();
  await page.getByText("order-7").waitFor();
  await page.getByRole("link", { name: "json", exact: true }).click();
  await page.locator("pre", { hasText: '"total": 42' }).waitFor();
  assert.match(await text(), /source=web/, "the header");
  await noError("message browser");
  await shot("records");
  await page.getByRole("link", { name: "hex", exact: true }).click();
  await page.getByText("6f 72 64 65 72 2d 37").waitFor();

  // The seek form, on partition 1: from offset 2, the last two records.
  await page.goto(`${base}/console#/topics/${encodeURIComponent(topic)}/1`);
  await page.getByText("v4").waitFor();
  await page.locator("#seek input[name=offset]").fill("2");
  await page.getByRole("button", { name: "Read" }).click();
  await page.waitForFunction(() => location.hash.includes("offset=2"));
  await page.waitForFunction(() => !document.querySelector("#page").innerText.includes("v1"));
  const offsets = await page.locator("main table tr td:first-child").allInnerTexts();
  assert.deepEqual(offsets, ["2", "3"], "records from offset 2");

  await page.getByRole("link", { name: "Consumer groups" }).click();
  await page.getByText("console-reader").waitFor();
  assert.match(await text(), /lag 1/);
  await shot("groups");

  await page.getByRole("link", { name: "Chaos runs" }).click();
  await page.getByText("VALID").first().waitFor();
  await shot("chaos");
  const [report] = await Promise.all([page.waitForEvent("popup"), page.getByRole("link", { name: "run-42" }).click()]);
  await report.waitForLoadState();
  assert.match(await report.content(), /42/, "the chaos report names its seed");

  await page.getByRole("link", { name: "Moves" }).click();
  await page.getByText("No partition is moving").waitFor();

  assert.deepEqual(elsewhere, [], "the console fetched only from the node");
  assert.deepEqual(failures, [], "no script or console errors");
  console.log(`console in Chromium: overview, topic, message browser (text, JSON, hex, seek), groups, chaos runs and moves; screenshots in ${shots}`);
} finally {
  await browser.close();
}
