#!/usr/bin/env node
// The Worker's route table at fleet size (issue 15): what one isolate cache
// miss costs a request when the table holds 10,000 routes, against the same
// request when it holds 3.
//
// Two Backhaul Workers under `wrangler dev --env local`, both with
// ROUTE_CACHE_TTL_MS=0 so that every request misses the isolate's copy and
// reads the Durable Object: "big" holds --routes routes (3,334 models × 3
// regions for 10,000), "small" only the measured model's 3 routes. The
// routes are published through the signed admin API in parallel batches,
// by three publisher keys (one per region, as one operator per region
// would; each stays under the Worker's per-publisher cap). The measured
// model's routes point at the local SSE upstream (bench/worker_harness.mjs);
// every other route at hosts never called.
//
// Then streamed chat completions for the measured model, one at a time,
// the two Workers alternating in blocks (so the machine's drift falls on
// both alike), sent to each runtime workerd's own entry (skipping wrangler's
// proxy, which production does not have): TTFB and total latency, and the
// CPU time (/proc, user + system) of each Worker's runtime workerd, which
// runs the Worker and its Durable Object, per request. Also GET /v1/models,
// which lists every model and so reads the whole table by design.
// The figures that matter are big over small: the cost of the table's size
// on a miss.
//
//   node bench/worker_table.mjs [--routes 10000] [--requests 300] [--port 8801] [--worker-dir DIR] [--baseline DIR]
//
// --worker-dir DIR: the Worker checkout to measure (default: this repo's
// worker/; DIR needs its node_modules). --baseline DIR: also measure another
// checkout's Worker in the same run, interleaved (a before/after under the
// same machine load). Prints one JSON document on stdout; progress on stderr.
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { cpus, loadavg } from "node:os";
import { resolve } from "node:path";
import { arg, logger, startUpstream, startWrangler, healthOk, once, summary, groupCpu, TICK_MS, workerDir as defaultWorkerDir } from "./worker_harness.mjs";

const ROUTES = arg("routes", 10000);
const N = arg("requests", 300);
const port = arg("port", 8801);
const BLOCK = 30;
const WARMUP = 20;
const PUBLISH_CONCURRENCY = 32;
const log = logger("worker-table");
const strArg = (name) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? process.argv[i + 1] : null;
};

const REGIONS = [
	["us-east", 39.04, -77.49],
	["eu-west", 53.35, -6.26],
	["ap-south", 19.08, 72.88],
];
const MODELS = Math.ceil(ROUTES / REGIONS.length);
const modelName = (i) => `m${String(i).padStart(5, "0")}`;
const MEASURED = modelName(Math.floor(MODELS / 2));

// One publisher key per region, one group, so every key may publish every model.
const keys = REGIONS.map(([region]) => ({ id: `bench-${region}`, region, ...generateKeyPairSync("ed25519") }));
const PUBLISHERS = JSON.stringify(
	keys.map((k) => ({
		id: k.id,
		publicKey: Buffer.from(k.publicKey.export({ format: "jwk" }).x, "base64url").toString("base64"),
		group: "bench",
		namespaces: ["*"],
		regions: [k.region],
	})),
);

function signed(key, method, path, body) {
	const ts = String(Math.floor(Date.now() / 1000));
	const payload = Buffer.concat([Buffer.from(`backhaul-v2.${key.id}.${ts}.${method}.${path}.`), Buffer.from(body)]);
	return { "x-backhaul-key-id": key.id, "x-backhaul-timestamp": ts, "x-backhaul-signature": `ed25519=${sign(null, payload, key.privateKey).toString("base64")}` };
}

let lastSequence = 0;
const nextSequence = () => (lastSequence = Math.max(lastSequence + 1, Date.now()));
const TOKEN = randomBytes(32).toString("base64url");

function routeOf(model, [region, latitude, longitude], endpoint) {
	return {
		namespace: "bench", name: model, region, model, endpoint, location: { latitude, longitude }, replicas: 1, readyReplicas: 1,
		routing: { heavyPromptTokens: 1024, heavyMaxTokens: 512, requestTimeoutMs: 60000, firstByteTimeoutMs: 5000, failoverAttempts: 3 },
		edgeModel: null, generation: 1, sequence: nextSequence(), publishedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z"), ttlSeconds: 3600,
		upstreamToken: TOKEN,
	};
}

async function put(base, route) {
	const key = keys.find((k) => k.region === route.region);
	const path = `/admin/v1/routes/${route.namespace}/${route.name}/${route.region}`;
	for (let attempt = 0; ; attempt++) {
		// publishedAt must be within 300 s of the Worker's clock when it arrives, and publishing takes minutes.
		const body = JSON.stringify({ ...route, publishedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z") });
		const res = await fetch(base + path, { method: "PUT", body, headers: { "content-type": "application/json", ...signed(key, "PUT", path, body) } });
		const text = await res.text();
		if (res.status === 200) return;
		// A write that lost a race to a newer timestamp-based sequence (none expected): retry with a fresh one.
		if (res.status === 409 && attempt < 2 && text.includes("stale_sequence")) {
			route = { ...route, sequence: nextSequence() };
			continue;
		}
		throw new Error(`PUT ${path}: ${res.status} ${text.slice(0, 300)}`);
	}
}

/** PUTs every route, PUBLISH_CONCURRENCY at a time; returns ms taken. */
async function publishAll(base, routes) {
	const started = performance.now();
	let next = 0;
	await Promise.all(
		Array.from({ length: PUBLISH_CONCURRENCY }, async () => {
			while (next < routes.length) await put(base, routes[next++]);
		}),
	);
	return Math.round(performance.now() - started);
}

/** Live routes the Worker holds, by the admin list of each key (its scope: its region), page by page where it pages. */
async function heldRoutes(base) {
	let n = 0;
	const path = "/admin/v1/routes";
	for (const key of keys) {
		for (let after = ""; ; ) {
			const res = await fetch(base + path + (after ? `?after=${encodeURIComponent(after)}` : ""), { headers: signed(key, "GET", path, "") });
			if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
			const page = await res.json();
			n += page.routes.filter((r) => !r.expired).length;
			if (!page.next) break;
			after = page.next;
		}
	}
	return n;
}

function checkout(dir) {
	const git = (...a) => {
		try {
			return execFileSync("git", ["-C", dir, ...a], { encoding: "utf8" }).trim();
		} catch {
			return null;
		}
	};
	return { dir, commit: git("rev-parse", "--short", "HEAD"), uncommittedFiles: (git("status", "--porcelain", "--", ".") ?? "").split("\n").filter(Boolean) };
}

const upstream = await startUpstream();
const endpoint = upstream.url("ok/table");
// Every model in every region: ceil(--routes / 3) models (10,002 routes for 10,000).
const bigRoutes = [];
for (let i = 0; i < MODELS; i++) {
	const m = modelName(i);
	for (const region of REGIONS) bigRoutes.push(routeOf(m, region, m === MEASURED ? endpoint : `https://${region[0]}.${m}.bench.example.com`));
}
const smallRoutes = REGIONS.map((region) => routeOf(MEASURED, region, endpoint));

const checkouts = [{ label: "current", dir: resolve(strArg("worker-dir") ?? defaultWorkerDir) }];
if (strArg("baseline")) checkouts.push({ label: "baseline", dir: resolve(strArg("baseline")) });

// Each Worker: its own wrangler dev on its own ports (entry, inspector),
// started one after another, then all published to at once (the Durable
// Object's writes are the slow part, and each Worker has its own).
const started = [];
let p = port;
for (const c of checkouts) {
	for (const [size, routes] of [["big", bigRoutes], ["small", smallRoutes]]) {
		started.push({ c, size, routes, w: await startWrangler({
			label: `${c.label} ${size}`, port: p, log, cwd: c.dir, probe: healthOk,
			extra: [
				"--inspector-port", String(p + 1), "--env", "local", "--var", `BACKHAUL_PUBLISHERS:${PUBLISHERS}`, "--var", "ROUTE_CACHE_TTL_MS:0",
				"--var", "DEFAULT_LOCATION:51.5,-0.1", "--var", "BACKHAUL_API_KEYS:", "--var", "ALLOW_ANONYMOUS:true",
			],
		}) });
		p += 2;
	}
}
const workers = await Promise.all(
	started.map(async ({ c, size, routes, w }) => {
		const publishMs = await publishAll(w.base, routes);
		const held = await heldRoutes(w.base);
		if (held !== routes.length) throw new Error(`${c.label} ${size}: holds ${held} live routes, published ${routes.length}`);
		log(`${c.label} ${size}: ${routes.length} routes published in ${publishMs} ms`);
		return { checkout: c, size, w, url: w.runtimeBase ?? w.base, publishMs, routes: routes.length, chat: { ttfb: [], total: [], ticks: 0 }, models: { total: [], ticks: 0 } };
	}),
);

async function modelsOnce(url) {
	const started = performance.now();
	const res = await fetch(`${url}/v1/models`);
	const body = await res.json();
	if (res.status !== 200 || !body.data.some((m) => m.id === MEASURED)) throw new Error(`/v1/models: ${res.status}`);
	return performance.now() - started;
}

const runtimeTicks = (w) => groupCpu(w.w.pgid).workerd_runtime ?? 0;
for (const w of workers) {
	for (let i = 0; i < WARMUP; i++) {
		const r = await once(`${w.url}/v1/chat/completions`, MEASURED);
		if (r.status !== 200) throw new Error(`${w.checkout.label} ${w.size}: status ${r.status} ${r.body}`);
		await modelsOnce(w.url);
	}
}
const blocks = Math.ceil(N / BLOCK);
const modelsPerBlock = Math.max(1, Math.round(BLOCK / 3));
const loadBefore = loadavg();
for (let b = 0; b < blocks; b++) {
	// Rotate the order each block.
	for (let j = 0; j < workers.length; j++) {
		const w = workers[(b + j) % workers.length];
		let t = runtimeTicks(w);
		for (let i = 0; i < BLOCK; i++) {
			const r = await once(`${w.url}/v1/chat/completions`, MEASURED);
			if (r.status !== 200) throw new Error(`${w.checkout.label} ${w.size}: status ${r.status} ${r.body}`);
			w.chat.ttfb.push(r.ttfb);
			w.chat.total.push(r.total);
		}
		w.chat.ticks += runtimeTicks(w) - t;
		t = runtimeTicks(w);
		for (let i = 0; i < modelsPerBlock; i++) w.models.total.push(await modelsOnce(w.url));
		w.models.ticks += runtimeTicks(w) - t;
	}
	log(`block ${b + 1}/${blocks}`);
}

const cpuMs = (s) => +((s.ticks * TICK_MS) / (s.total.length)).toFixed(3);
const out = {
	routes: bigRoutes.length, models: MODELS, regions: REGIONS.length, measuredModel: MEASURED, requests: blocks * BLOCK, blocks, block: BLOCK,
	modelsRequests: blocks * modelsPerBlock, publishConcurrency: PUBLISH_CONCURRENCY, routeCacheTtlMs: 0,
	cpus: cpus().length, loadavgBefore: loadBefore.map((x) => +x.toFixed(2)), loadavgAfter: loadavg().map((x) => +x.toFixed(2)),
	note: "latency to the runtime workerd's own entry; CPU: the runtime workerd (Worker + Durable Object), /proc ticks of 10 ms over each series, per request",
	checkouts: {},
};
for (const c of checkouts) {
	const of = (size) => workers.find((w) => w.checkout === c && w.size === size);
	const view = (w) => ({
		routes: w.routes, publishMs: w.publishMs, startupMs: w.w.startupMs, entry: w.w.runtimeBase ? "runtime workerd" : "wrangler proxy",
		chat: { ttfbMs: summary(w.chat.ttfb), totalMs: summary(w.chat.total), runtimeCpuMsPerRequest: cpuMs({ ticks: w.chat.ticks, total: w.chat.total }) },
		models: { totalMs: summary(w.models.total), runtimeCpuMsPerRequest: cpuMs(w.models) },
	});
	const big = view(of("big"));
	const small = view(of("small"));
	const r = (a, b) => (b > 0 ? +(a / b).toFixed(3) : null);
	out.checkouts[c.label] = {
		...checkout(c.dir), big, small,
		// What the table's size costs one miss: big over small, and big minus small.
		ratio: {
			chatTotalP50: r(big.chat.totalMs.p50, small.chat.totalMs.p50), chatTotalP99: r(big.chat.totalMs.p99, small.chat.totalMs.p99),
			chatTtfbP50: r(big.chat.ttfbMs.p50, small.chat.ttfbMs.p50), chatTtfbP99: r(big.chat.ttfbMs.p99, small.chat.ttfbMs.p99), chatCpu: r(big.chat.runtimeCpuMsPerRequest, small.chat.runtimeCpuMsPerRequest),
			modelsTotalP50: r(big.models.totalMs.p50, small.models.totalMs.p50), modelsCpu: r(big.models.runtimeCpuMsPerRequest, small.models.runtimeCpuMsPerRequest),
		},
		missCostMs: {
			chatTtfbP50: +(big.chat.ttfbMs.p50 - small.chat.ttfbMs.p50).toFixed(3),
			chatTtfbP99: +(big.chat.ttfbMs.p99 - small.chat.ttfbMs.p99).toFixed(3),
			chatTotalP50: +(big.chat.totalMs.p50 - small.chat.totalMs.p50).toFixed(3),
			chatTotalP99: +(big.chat.totalMs.p99 - small.chat.totalMs.p99).toFixed(3),
			chatCpu: +(big.chat.runtimeCpuMsPerRequest - small.chat.runtimeCpuMsPerRequest).toFixed(3),
		},
	};
	log(c.label, JSON.stringify(out.checkouts[c.label].ratio), JSON.stringify(out.checkouts[c.label].missCostMs));
}
console.log(JSON.stringify(out, null, 2));
process.exit(0);
