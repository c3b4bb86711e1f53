#!/usr/bin/env node
// Routing overhead of the Backhaul Worker, locally: a streamed chat
// completion through `wrangler dev --env local` against the same SSE
// upstream called directly (time to first byte and to the end of the
// stream), the Worker's CPU time per request (the CPU time wrangler's
// processes used during the series, over the requests), and what one
// failover adds beyond the failed attempt's own time, for a refused
// connection, a 503, a 429 and a first byte slower than firstByteTimeoutMs.
//
// Extends worker/bench/latency.mjs (the Worker's own quick check) with
// total time, CPU, 429, slow first byte, and the failed attempts' own time,
// and a profile of where the added time goes: the same requests straight to
// the Worker's workerd (skipping wrangler dev's proxy), and through a Worker
// that only forwards (bench/passthrough) under the same wrangler dev, on
// --port + 1. Everything is on 127.0.0.1.
//
//   node bench/routing.mjs [--requests 300] [--slow-requests 30] [--port 8791]
//
// Prints one JSON document on stdout; progress on stderr.
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const arg = (name, dflt) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg("requests", 300);
const SLOW_N = arg("slow-requests", 30);
const workerPort = arg("port", 8791);
const FIRST_BYTE_TIMEOUT_MS = 100;
const SECRET = "bench-secret";
const workerDir = join(dirname(fileURLToPath(import.meta.url)), "..", "worker");
const log = (...a) => console.error("[routing]", ...a);

// The upstream: headers and the first SSE chunk at once, three more 5 ms
// apart, then [DONE]. /fail503 and /fail429 answer at once with that status
// (429 with Retry-After: 0, so the Worker's cooldown is 1 ms and every
// request tries the saturated region again); /slow holds its headers 2 s.
const chunk = (t) => `data: {"choices":[{"index":0,"delta":{"content":"${t}"}}]}\n\n`;
const upstream = createServer((req, res) => {
	if (req.url.startsWith("/fail503/")) {
		res.writeHead(503, { "content-type": "application/json" });
		return res.end('{"error":{"message":"unavailable"}}');
	}
	if (req.url.startsWith("/fail429/")) {
		res.writeHead(429, { "content-type": "application/json", "retry-after": "0" });
		return res.end('{"error":{"message":"overloaded"}}');
	}
	req.resume();
	req.on("end", () => {
		const respond = () => {
			if (res.destroyed) return;
			res.writeHead(200, { "content-type": "text/event-stream" });
			res.write(chunk("a"));
			let i = 0;
			const t = setInterval(() => {
				if (++i <= 3) return void res.write(chunk("b"));
				clearInterval(t);
				res.end("data: [DONE]\n\n");
			}, 5);
		};
		if (req.url.startsWith("/slow/")) setTimeout(respond, 2000);
		else respond();
	});
});
upstream.keepAliveTimeout = 60_000;
await new Promise((r) => upstream.listen(0, "127.0.0.1", r));
const upPort = upstream.address().port;
const refused = createServer();
await new Promise((r) => refused.listen(0, "127.0.0.1", r));
const refusedPort = refused.address().port;
await new Promise((r) => refused.close(r));

// wrangler dev runs two workerd processes: its proxy on --port, and the
// runtime running the Worker, whose own entry socket listens on a port
// picked at start. Requests to that socket skip wrangler's proxy; comparing
// the two shows where the added time goes.
function runtimeEntryPorts(pgid) {
	const pids = readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((pid) => {
		try {
			const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
			const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
			const pgrp = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
			return pgrp === pgid && cmd.includes("workerd") && cmd.includes("entry=127.0.0.1:0");
		} catch {
			return false;
		}
	});
	let ss = "";
	try {
		ss = execFileSync("ss", ["-ltnpH"], { encoding: "utf8" });
	} catch {}
	return pids.flatMap((pid) => ss.split("\n").filter((l) => l.includes(`pid=${pid},`)).map((l) => l.match(/127\.0\.0\.1:(\d+)/)?.[1]).filter(Boolean));
}

const devs = [];
process.on("exit", () => {
	for (const d of devs) {
		try {
			process.kill(-d.pid, "SIGTERM");
		} catch {}
	}
	upstream.close();
});
// Starts `wrangler dev` (in its own process group) and waits until `probe`
// accepts its answer; finds the runtime's own entry the same way.
async function startWrangler(label, port, extra, probe) {
	const started = performance.now();
	const persist = mkdtempSync(join(tmpdir(), "backhaul-routing-"));
	const dev = spawn("npx", ["wrangler", "dev", "--ip", "127.0.0.1", "--port", String(port), "--persist-to", persist, "--log-level", "error", ...extra],
		{ cwd: workerDir, stdio: ["ignore", "ignore", "pipe"], detached: true });
	devs.push(dev);
	process.on("exit", () => rmSync(persist, { recursive: true, force: true }));
	let err = "";
	dev.stderr.on("data", (d) => (err += d));
	const base = `http://127.0.0.1:${port}`;
	const deadline = Date.now() + 120_000;
	for (;;) {
		try {
			if (await probe(base)) break;
		} catch {}
		if (Date.now() > deadline) {
			log(`${label}: wrangler dev did not answer:`, err.slice(-2000));
			process.exit(1);
		}
		await new Promise((r) => setTimeout(r, 250));
	}
	const startupMs = Math.round(performance.now() - started);
	let runtimeBase = null;
	for (const p of runtimeEntryPorts(dev.pid)) {
		try {
			if (await probe(`http://127.0.0.1:${p}`)) {
				runtimeBase = `http://127.0.0.1:${p}`;
				break;
			}
		} catch {}
	}
	log(`${label}: wrangler dev is up after ${startupMs} ms; runtime entry ${runtimeBase ?? "not found"}`);
	return { dev, base, runtimeBase, startupMs };
}

const healthOk = async (b) => {
	const r = await fetch(`${b}/health`, { signal: AbortSignal.timeout(2000) });
	return r.ok && (await r.text()).includes('"ok"');
};
const backhaul = await startWrangler("backhaul worker", workerPort,
	["--env", "local", "--var", `BACKHAUL_PUBLISH_SECRET:${SECRET}`, "--var", "DEFAULT_LOCATION:51.5,-0.1", "--var", "BACKHAUL_API_KEYS:"], healthOk);
const dev = backhaul.dev;
const base = backhaul.base;
const runtimeBase = backhaul.runtimeBase;
const startupMs = backhaul.startupMs;
// The floor: a Worker that only forwards to the upstream (bench/passthrough).
const sseOk = async (b) => {
	const r = await fetch(`${b}/v1/chat/completions`, { method: "POST", body: "{}", signal: AbortSignal.timeout(2000) });
	await r.arrayBuffer();
	return r.ok && (r.headers.get("content-type") ?? "").includes("text/event-stream");
};
const passthrough = await startWrangler("passthrough worker", workerPort + 1,
	["--config", join(workerDir, "..", "bench", "passthrough", "wrangler.jsonc"), "--var", `UPSTREAM:http://127.0.0.1:${upPort}/passthrough`], sseOk);

// CPU time (user + system, in clock ticks) of every process in wrangler
// dev's process group, by command name (node: wrangler and its proxy;
// workerd: the runtime running the Worker).
const TICK_MS = 10; // Linux USER_HZ is 100
function groupCpu(pgid) {
	const out = {};
	for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
		let stat;
		try {
			stat = readFileSync(`/proc/${pid}/stat`, "utf8");
		} catch {
			continue;
		}
		const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
		const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
		if (Number(f[2]) !== pgid) continue; // pgrp
		const ticks = Number(f[11]) + Number(f[12]);
		let name = comm;
		if (comm.startsWith("workerd")) {
			let cmd = "";
			try {
				cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
			} catch {}
			name = cmd.includes("entry=127.0.0.1:0") ? "workerd_runtime" : "workerd_proxy";
		}
		out[name] = (out[name] ?? 0) + ticks;
	}
	return out;
}

async function publish(route) {
	const path = `/admin/v1/routes/${route.namespace}/${route.name}/${route.region}`;
	const body = JSON.stringify(route);
	const ts = String(Math.floor(Date.now() / 1000));
	const sig = createHmac("sha256", SECRET).update(`${ts}.PUT.${path}.${body}`).digest("hex");
	const res = await fetch(base + path, { method: "PUT", body, headers: { "x-backhaul-timestamp": ts, "x-backhaul-signature": `v1=${sig}` } });
	if (res.status !== 200) throw new Error(`publish ${path}: ${res.status} ${await res.text()}`);
}
const route = (name, region, model, endpoint, latitude, longitude) => ({
	namespace: "bench", name, region, model, endpoint, location: { latitude, longitude }, replicas: 1, readyReplicas: 1,
	routing: { heavyPromptTokens: 1024, heavyMaxTokens: 512, requestTimeoutMs: 60000, firstByteTimeoutMs: FIRST_BYTE_TIMEOUT_MS, failoverAttempts: 3 },
	edgeModel: null, generation: 1, publishedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z"), ttlSeconds: 3600,
});
const up = (path) => `http://127.0.0.1:${upPort}/${path}`;
// Each failing region sits in London (the default location, so it is tried
// first), the healthy one in Mumbai.
const kinds = { refused: `http://127.0.0.1:${refusedPort}`, status503: up("fail503/x"), status429: up("fail429/x"), slowFirstByte: up("slow/x") };
await publish(route("plain", "mumbai", "m-plain", up("ok/plain"), 19.07, 72.88));
for (const [kind, endpoint] of Object.entries(kinds)) {
	const name = kind.toLowerCase();
	await publish(route(name, "london", `m-${name}`, endpoint, 51.5, -0.12));
	await publish(route(name, "mumbai", `m-${name}`, up(`ok/${name}`), 19.07, 72.88));
}

const body = (model) => JSON.stringify({ model, stream: true, messages: [{ role: "user", content: "Hello" }] });
// One request: ms to the first body chunk and to the end of the body.
async function once(url, model) {
	const started = performance.now();
	const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: body(model) });
	const reader = res.body.getReader();
	await reader.read();
	const ttfb = performance.now() - started;
	while (!(await reader.read()).done);
	return { ttfb, total: performance.now() - started, status: res.status, attempts: res.headers.get("x-backhaul-attempts") };
}
// The failed attempt alone, straight at the failing upstream: time until
// fetch settles (an error for the refused port, the whole body otherwise).
async function failedAlone(url) {
	const started = performance.now();
	try {
		const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: body("x") });
		await res.arrayBuffer();
	} catch {}
	return performance.now() - started;
}
const pct = (xs, p) => {
	const s = [...xs].sort((a, b) => a - b);
	return +s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))].toFixed(3);
};
const summary = (xs) => ({ p50: pct(xs, 50), p99: pct(xs, 99), mean: +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3), samples: xs.length });

async function series(label, url, model, n, expectAttempts) {
	for (let i = 0; i < 10; i++) await once(url, model); // warm-up
	const ttfb = [];
	const total = [];
	for (let i = 0; i < n; i++) {
		const r = await once(url, model);
		if (r.status !== 200 || (expectAttempts && r.attempts !== expectAttempts)) throw new Error(`${label}: status ${r.status}, attempts ${r.attempts}`);
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
