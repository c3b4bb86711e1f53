#!/usr/bin/env node
// Routing overhead of the Backhaul Worker, locally: a streamed chat
// completion through `wrangler dev --env local` against the same SSE
// upstream called directly (time to first byte and to the end of the
// stream), the Worker's CPU time per request (the CPU time wrangler's
// processes used during the series, over the requests), and what one
// failover adds beyond the failed attempt's own time, for a refused
// connection, a 503, a 429 and a first byte slower than firstByteTimeoutMs.
//
// To see where the added time goes, the same requests also go straight to
// the Worker's workerd (skipping wrangler dev's proxy) and through a Worker
// that only forwards (bench/passthrough) under the same wrangler dev, on
// --port + 1. Everything is on 127.0.0.1. The upstream, wrangler dev and
// the request helpers are bench/worker_harness.mjs (shared with
// bench/worker_profile.mjs, which shows where the Worker's CPU goes).
//
//   node bench/routing.mjs [--requests 300] [--slow-requests 30] [--port 8791] [--baseline DIR]
//   (from worker/: npm run --silent bench -- --requests 100)
//
// --baseline DIR: also run the Backhaul Worker of another checkout (DIR is
// its worker/ directory, with node_modules) on --port + 2, interleaved with
// this one (paths viaBaseline, viaBaselineRuntimeOnly): a before/after
// comparison under the same machine load.
//
// Prints one JSON document on stdout; progress on stderr.
import { cpus } from "node:os";
import {
	arg, logger, startUpstream, startBackhaul, startWrangler, sseOk, passthroughConfig, publish, route, once, failedAlone, summary, pct, groupCpu, TICK_MS,
} from "./worker_harness.mjs";

const N = arg("requests", 300);
const SLOW_N = arg("slow-requests", 30);
const workerPort = arg("port", 8791);
// The least a route may set (docs/publication.md); the slow upstream holds its headers 2 s.
const FIRST_BYTE_TIMEOUT_MS = 1000;
const log = logger("routing");
const baselineIdx = process.argv.indexOf("--baseline");
const baselineDir = baselineIdx > 0 ? process.argv[baselineIdx + 1] : null;

const upstream = await startUpstream();
const up = upstream.url;
const backhaul = await startBackhaul(workerPort, log);
const dev = backhaul.dev;
const base = backhaul.base;
const runtimeBase = backhaul.runtimeBase;
const startupMs = backhaul.startupMs;
// The floor: a Worker that only forwards to the upstream (bench/passthrough).
const passthrough = await startWrangler({
	label: "passthrough worker", port: workerPort + 1, log, probe: sseOk,
	extra: ["--config", passthroughConfig, "--var", `UPSTREAM:http://127.0.0.1:${upstream.port}/passthrough`],
});

const baseline = baselineDir ? await startBackhaul(workerPort + 2, log, [], baselineDir, "baseline backhaul worker") : null;

const bhRoute = (name, region, model, endpoint, lat, lon) => route(name, region, model, endpoint, lat, lon, FIRST_BYTE_TIMEOUT_MS);
// Each failing region sits in London (the default location, so it is tried
// first), the healthy one in Mumbai.
const kinds = { refused: upstream.refusedUrl, status503: up("fail503/x"), status429: up("fail429/x"), slowFirstByte: up("slow/x") };
await publish(base, bhRoute("plain", "mumbai", "m-plain", up("ok/plain"), 19.07, 72.88));
if (baseline) await publish(baseline.base, bhRoute("plain", "mumbai", "m-plain", up("ok/plain"), 19.07, 72.88));
for (const [kind, endpoint] of Object.entries(kinds)) {
	const name = kind.toLowerCase();
	await publish(base, bhRoute(name, "london", `m-${name}`, endpoint, 51.5, -0.12));
	await publish(base, bhRoute(name, "mumbai", `m-${name}`, up(`ok/${name}`), 19.07, 72.88));
}

async function series(label, url, model, n, expectAttempts) {
	for (let i = 0; i < 10; i++) await once(url, model); // warm-up
	const ttfb = [];
	const total = [];
	for (let i = 0; i < n; i++) {
		const r = await once(url, model);
		if (r.status !== 200 || (expectAttempts && r.attempts !== expectAttempts)) throw new Error(`${label}: status ${r.status}, attempts ${r.attempts} ${r.body}`);
		ttfb.push(r.ttfb);
		total.push(r.total);
	}
	const out = { ttfbMs: summary(ttfb), totalMs: summary(total) };
	log(label, JSON.stringify(out));
	return out;
}
async function aloneSeries(url, n) {
	for (let i = 0; i < 10; i++) await failedAlone(url);
	const ms = [];
	for (let i = 0; i < n; i++) ms.push(await failedAlone(url));
	return summary(ms);
}

// The paths, alternating in blocks so drift in machine load falls on all
// alike. CPU is counted for the wrangler dev a path goes through.
const BLOCKS = 5;
const per = Math.ceil(N / BLOCKS);
const paths = [
	{ key: "direct", url: up("ok/direct/v1/chat/completions") },
	{ key: "viaWorker", url: `${base}/v1/chat/completions`, attempts: "1", pgid: dev.pid },
	runtimeBase && { key: "viaWorkerRuntimeOnly", url: `${runtimeBase}/v1/chat/completions`, attempts: "1", pgid: dev.pid },
	{ key: "viaPassthrough", url: `${passthrough.base}/v1/chat/completions`, pgid: passthrough.dev.pid },
	passthrough.runtimeBase && { key: "viaPassthroughRuntimeOnly", url: `${passthrough.runtimeBase}/v1/chat/completions`, pgid: passthrough.dev.pid },
	baseline && { key: "viaBaseline", url: `${baseline.base}/v1/chat/completions`, attempts: "1", pgid: baseline.pgid },
	baseline?.runtimeBase && { key: "viaBaselineRuntimeOnly", url: `${baseline.runtimeBase}/v1/chat/completions`, attempts: "1", pgid: baseline.pgid },
].filter(Boolean);
const blocks = Object.fromEntries(paths.map((p) => [p.key, []]));
const cpuTicks = Object.fromEntries(paths.map((p) => [p.key, {}]));
for (let b = 0; b < BLOCKS; b++) {
	for (const p of paths) {
		const c0 = p.pgid ? groupCpu(p.pgid) : {};
		blocks[p.key].push(await series(`${p.key} block ${b + 1}`, p.url, "m-plain", per, p.attempts));
		if (!p.pgid) continue;
		const c1 = groupCpu(p.pgid);
		for (const k of Object.keys(c1)) cpuTicks[p.key][k] = (cpuTicks[p.key][k] ?? 0) + c1[k] - (c0[k] ?? 0);
	}
}
const requestsPerPath = BLOCKS * (per + 10); // the series' warm-up requests also ran
// p50/p99 over blocks: medians of the block percentiles are robust to one noisy block.
const median = (xs) => pct(xs, 50);
const combine = (bs) => ({
	ttfbMs: { p50: median(bs.map((x) => x.ttfbMs.p50)), p99: median(bs.map((x) => x.ttfbMs.p99)) },
	totalMs: { p50: median(bs.map((x) => x.totalMs.p50)), p99: median(bs.map((x) => x.totalMs.p99)) },
});
const pathResults = Object.fromEntries(Object.entries(blocks).map(([k, bs]) => [k, combine(bs)]));
const direct = pathResults.direct;
const viaWorker = pathResults.viaWorker;
const addedOver = (x) => x && {
	ttfb: { p50: +(x.ttfbMs.p50 - direct.ttfbMs.p50).toFixed(3), p99: +(x.ttfbMs.p99 - direct.ttfbMs.p99).toFixed(3) },
	total: { p50: +(x.totalMs.p50 - direct.totalMs.p50).toFixed(3), p99: +(x.totalMs.p99 - direct.totalMs.p99).toFixed(3) },
};
// CPU time of a wrangler dev's processes during a path's series, over its
// requests, by process: node (wrangler), workerd_proxy, workerd_runtime.
const cpuMsPerRequest = Object.fromEntries(Object.entries(cpuTicks).filter(([k]) => k !== "direct").map(([k, ticks]) => [k,
	Object.fromEntries(Object.entries(ticks).filter(([, t]) => t > 0).map(([name, t]) => [name, +((t * TICK_MS) / requestsPerPath).toFixed(3)]))]));

const failover = {};
for (const [kind] of Object.entries(kinds)) {
	const name = kind.toLowerCase();
	const n = kind === "slowFirstByte" ? SLOW_N : N;
	const through = await series(`failover ${kind}`, `${base}/v1/chat/completions`, `m-${name}`, n, "2");
	// The failed attempt's own time: measured straight at the failing
	// upstream, except the slow first byte, whose attempt lasts exactly
	// firstByteTimeoutMs by construction.
	const alone = kind === "slowFirstByte" ? { p50: FIRST_BYTE_TIMEOUT_MS, p99: FIRST_BYTE_TIMEOUT_MS, note: "firstByteTimeoutMs" } : await aloneSeries(kinds[kind], n);
	failover[kind] = {
		ttfbMs: through.ttfbMs,
		failedAttemptMs: alone,
		addedMs: {
			p50: +(through.ttfbMs.p50 - viaWorker.ttfbMs.p50 - alone.p50).toFixed(3),
			p99: +(through.ttfbMs.p99 - viaWorker.ttfbMs.p99 - alone.p99).toFixed(3),
		},
	};
}

const result = {
	requests: N,
	blocks: BLOCKS,
	slowRequests: SLOW_N,
	firstByteTimeoutMs: FIRST_BYTE_TIMEOUT_MS,
	wranglerDevStartupMs: startupMs,
	passthroughStartupMs: passthrough.startupMs,
	baseline: baselineDir,
	// Every path's p50/p99 and what it adds over the upstream directly:
	// viaWorker is the Backhaul Worker through wrangler dev; *RuntimeOnly
	// skip wrangler's proxy (the Worker's own workerd entry); viaPassthrough
	// is a Worker that only forwards (bench/passthrough), the floor.
	paths: pathResults,
	addedMsOverDirect: Object.fromEntries(Object.entries(pathResults).filter(([k]) => k !== "direct").map(([k, v]) => [k, addedOver(v)])),
	direct,
	viaWorker,
	addedMs: addedOver(viaWorker),
	cpuMsPerRequest,
	failover,
	machine: { nproc: cpus().length },
};
console.log(JSON.stringify(result, null, 2));
process.exit(0);
