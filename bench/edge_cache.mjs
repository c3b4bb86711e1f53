#!/usr/bin/env node
// The edge's response cache and request coalescing (issue 18) with a real
// region behind the Worker: the Backhaul Worker under `wrangler dev --env
// local` (CACHE_MODELS caching --model for an hour) in front of one running
// backhaul-inference (scripts/bench.sh's edge-cache section starts it on
// SmolLM2), its route published through the signed admin API
// (bench/worker_harness.mjs).
//
// Cache: --prompts distinct greedy prompts per form (streamed, and not),
// each sent once (a MISS: the region generates it) and then --hits times
// (HITs: answered from caches.default), one request at a time. Per request:
// time to the first body byte (TTFB) and to the end of the body, from the
// client; the hit's text must equal the miss's. Reported: p50/p99 of each,
// miss and hit side by side, and hit over miss.
//
// Coalescing: per K in --coalesce, --rounds rounds of K identical greedy
// streamed requests sent at once (a prompt no earlier request sent), and the
// generations the region ran for them, counted at its /metrics
// (backhaul_inference_requests_total: one per request it answered or
// refused). Ratio = requests served / generations (K when all K share one).
//
//   node bench/edge_cache.mjs --region http://127.0.0.1:PORT --metrics http://127.0.0.1:PORT/metrics
//     [--model smollm2] [--prompts 8] [--hits 20] [--max-tokens 32] [--coalesce 1,4,16] [--rounds 3]
//     [--port 8811] [--worker-dir DIR]
//
// --worker-dir: the Worker checkout to run (default this repo's worker/;
// wrangler dev reloads on every edit of its sources, killing the requests in
// flight, so measure a checkout nobody edits meanwhile). Prints one JSON
// document on stdout; progress on stderr. Everything binds 127.0.0.1.
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { resolve } from "node:path";
import { arg, logger, publish, route, startBackhaul, summary, workerDir } from "./worker_harness.mjs";

const strArg = (name, dflt = null) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? process.argv[i + 1] : dflt;
};
const REGION = strArg("region");
const METRICS = strArg("metrics");
const MODEL = strArg("model", "smollm2");
const PROMPTS = arg("prompts", 8);
const HITS = arg("hits", 20);
const MAX_TOKENS = arg("max-tokens", 32);
const COALESCE = strArg("coalesce", "1,4,16").split(",").map(Number);
const ROUNDS = arg("rounds", 3);
const port = arg("port", 8811);
const dir = resolve(strArg("worker-dir") ?? workerDir);
const log = logger("edge-cache");
if (!REGION || !METRICS) {
	log("--region and --metrics are required");
	process.exit(2);
}
const REQUESTS_TOTAL = "backhaul_inference_requests_total";

/** The region's requests so far: the sum of every label set of REQUESTS_TOTAL. */
async function regionRequests() {
	const text = await (await fetch(METRICS)).text();
	let sum = 0;
	for (const line of text.split("\n")) {
		if (!line.startsWith(`${REQUESTS_TOTAL}{`) && !line.startsWith(`${REQUESTS_TOTAL} `)) continue;
		sum += Number(line.slice(line.lastIndexOf(line.includes("}") ? "}" : " ") + 1).trim().split(" ")[0]);
	}
	return sum;
}

const worker = await startBackhaul(port, log, ["--var", `CACHE_MODELS:${JSON.stringify({ [MODEL]: { ttlSeconds: 3600 } })}`], dir, "backhaul worker");
const base = worker.base;
// Every request goes to the region (the local environment has no edge);
// generous timeouts: a miss on two cores takes seconds.
const r = route("edge-cache", "local", MODEL, REGION, 51.5, -0.1, 60_000);
r.routing.requestTimeoutMs = 300_000;
await publish(base, r);
for (let t = Date.now(); ; ) {
	const models = await (await fetch(`${base}/v1/models`)).json();
	if (models.data?.some((m) => m.id === MODEL)) break;
	if (Date.now() - t > 30_000) throw new Error(`the Worker does not list ${MODEL}`);
	await new Promise((ok) => setTimeout(ok, 200));
}

// Prompts no earlier run of this script sent (the cache is in wrangler's
// per-run persistence directory anyway).
const run = randomUUID().slice(0, 8);
const prompt = (label, i) => `In two sentences, tell me something about ${label} number ${i} (run ${run}).`;
const body = (text, stream) =>
	JSON.stringify({ model: MODEL, stream, temperature: 0, max_tokens: MAX_TOKENS, messages: [{ role: "user", content: text }] });

/** The generated text of an answer body: a completion's content, or a stream's content deltas. */
function textOf(raw, stream) {
	if (!stream) return JSON.parse(raw).choices[0].message.content;
	let out = "";
	for (const line of raw.split("\n")) {
		if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
		out += JSON.parse(line.slice(6)).choices?.[0]?.delta?.content ?? "";
	}
	return out;
}

/** One request: TTFB (first body chunk) and total ms, the cache header, the text. */
async function timed(payload, stream) {
	const started = performance.now();
	const res = await fetch(`${base}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: payload });
	const reader = res.body.getReader();
	const decoder = new TextDecoder();
	let raw = "";
	let ttfb = null;
	for (let c; !(c = await reader.read()).done; ) {
		ttfb ??= performance.now() - started;
		raw += decoder.decode(c.value, { stream: true });
	}
	const total = performance.now() - started;
	if (res.status !== 200) throw new Error(`status ${res.status}: ${raw.slice(0, 500)}`);
	return { ttfb: ttfb ?? total, total, cache: res.headers.get("x-backhaul-cache"), text: textOf(raw, stream) };
}

// Warm the route and the region once (not cached: a skip-cache request).
await fetch(`${base}/v1/chat/completions`, {
	method: "POST", headers: { "content-type": "application/json", "x-backhaul-skip-cache": "true" }, body: body("Say hello.", false),
}).then((res) => res.arrayBuffer());

const cache = {};
for (const [form, stream] of [["streamed", true], ["nonStreamed", false]]) {
	const miss = { ttfb: [], total: [] };
	const hit = { ttfb: [], total: [] };
	const generationsBefore = await regionRequests();
	for (let i = 0; i < PROMPTS; i++) {
		const payload = body(prompt(form, i), stream);
		const m = await timed(payload, stream);
		if (m.cache !== "MISS") throw new Error(`${form} prompt ${i}: first request x-backhaul-cache ${m.cache}, want MISS`);
		miss.ttfb.push(m.ttfb);
		miss.total.push(m.total);
		for (let j = 0; j < HITS; j++) {
			const h = await timed(payload, stream);
			if (h.cache !== "HIT") throw new Error(`${form} prompt ${i}: repeat ${j} x-backhaul-cache ${h.cache}, want HIT`);
			if (h.text !== m.text) throw new Error(`${form} prompt ${i}: a hit's text differs from the miss's`);
			hit.ttfb.push(h.ttfb);
			hit.total.push(h.total);
		}
	}
	const generations = (await regionRequests()) - generationsBefore;
	const out = {
		prompts: PROMPTS, hitsPerPrompt: HITS, generations,
		missMs: { ttfb: summary(miss.ttfb), total: summary(miss.total) },
		hitMs: { ttfb: summary(hit.ttfb), total: summary(hit.total) },
	};
	const ratio = (a, b) => +(a / b).toFixed(5);
	out.hitOverMiss = {
		ttfbP50: ratio(out.hitMs.ttfb.p50, out.missMs.ttfb.p50), ttfbP99: ratio(out.hitMs.ttfb.p99, out.missMs.ttfb.p99),
		totalP50: ratio(out.hitMs.total.p50, out.missMs.total.p50), totalP99: ratio(out.hitMs.total.p99, out.missMs.total.p99),
	};
	if (generations !== PROMPTS) throw new Error(`${form}: the region counted ${generations} requests for ${PROMPTS} misses and ${PROMPTS * HITS} hits`);
	log(form, JSON.stringify(out));
	cache[form] = out;
}

const coalescing = [];
for (const k of COALESCE) {
	const rounds = [];
	for (let round = 0; round < ROUNDS; round++) {
		const payload = body(prompt(`coalescing at ${k}, round`, round), true);
		const before = await regionRequests();
		const started = performance.now();
		const answers = await Promise.all(Array.from({ length: k }, () => timed(payload, true)));
		const wallMs = +(performance.now() - started).toFixed(1);
		const generations = (await regionRequests()) - before;
		if (answers.some((a) => a.text !== answers[0].text || a.text === "")) throw new Error(`K=${k}: the answers differ`);
		const headers = {};
		for (const a of answers) headers[a.cache] = (headers[a.cache] ?? 0) + 1;
		rounds.push({ generations, wallMs, ttfbMsMax: +Math.max(...answers.map((a) => a.ttfb)).toFixed(1), cacheHeaders: headers });
	}
	const generations = rounds.reduce((s, r) => s + r.generations, 0);
	const out = { k, rounds, requests: k * ROUNDS, generations, ratio: +((k * ROUNDS) / generations).toFixed(3) };
	log(`coalescing K=${k}`, JSON.stringify(out));
	coalescing.push(out);
}

// A linked node_modules (a worktree run, --worker-dir) is not a change to the Worker.
const git = (...a) => {
	try {
		return execFileSync("git", ["-C", dir, ...a], { encoding: "utf8" }).trim();
	} catch {
		return null;
	}
};
console.log(JSON.stringify({
	config: { model: MODEL, region: REGION, prompts: PROMPTS, hits: HITS, maxTokens: MAX_TOKENS, coalesce: COALESCE, rounds: ROUNDS, temperature: 0 },
	worker: { dir, commit: git("rev-parse", "--short", "HEAD"), uncommittedFiles: (git("status", "--porcelain", "--", ".") ?? "").split("\n").filter((l) => l && !/node_modules$/.test(l)) },
	wranglerDevStartupMs: worker.startupMs,
	cache,
	coalescing,
}, null, 2));
process.exit(0);
