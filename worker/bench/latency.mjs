#!/usr/bin/env node
// Measures what the Worker adds, locally: time to first byte (TTFB) of a
// streamed chat completion through `wrangler dev --env local` versus straight
// to the same SSE upstream, and the time a failover adds (refused connection;
// 503). Everything runs on 127.0.0.1: a Node SSE upstream started here and a
// wrangler dev this script starts and stops.
//
//   node bench/latency.mjs [--requests 200] [--port 8790]
//
// Prints a JSON summary on stdout; progress on stderr.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const arg = (name, dflt) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg("requests", 200);
const workerPort = arg("port", 8790);
const SECRET = "bench-secret";
const log = (...a) => console.error("[bench]", ...a);

// The upstream: first SSE chunk at once, then three more 5 ms apart, then [DONE].
const upstream = createServer((req, res) => {
	if (req.url.startsWith("/fail503/")) {
		res.writeHead(503, { "content-type": "application/json" });
		return res.end('{"error":{"message":"overloaded"}}');
	}
	req.resume();
	req.on("end", () => {
		res.writeHead(200, { "content-type": "text/event-stream" });
		const chunk = (t) => `data: {"choices":[{"index":0,"delta":{"content":"${t}"}}]}\n\n`;
		res.write(chunk("a"));
		let i = 0;
		const t = setInterval(() => {
			if (++i <= 3) return void res.write(chunk("b"));
			clearInterval(t);
			res.end("data: [DONE]\n\n");
		}, 5);
	});
});
await new Promise((r) => upstream.listen(0, "127.0.0.1", r));
const upPort = upstream.address().port;
const refused = createServer();
await new Promise((r) => refused.listen(0, "127.0.0.1", r));
const refusedPort = refused.address().port;
await new Promise((r) => refused.close(r));

const devStarted = performance.now();
const persist = mkdtempSync(join(tmpdir(), "backhaul-bench-"));
const dev = spawn(
	"npx",
	["wrangler", "dev", "--env", "local", "--ip", "127.0.0.1", "--port", String(workerPort), "--persist-to", persist,
		"--var", `BACKHAUL_PUBLISH_SECRET:${SECRET}`, "--var", "DEFAULT_LOCATION:51.5,-0.1", "--var", "BACKHAUL_API_KEYS:"],
	{ stdio: ["ignore", "ignore", "pipe"], detached: true },
);
let devErr = "";
dev.stderr.on("data", (d) => (devErr += d));
const stop = () => {
	try {
		process.kill(-dev.pid, "SIGTERM");
	} catch {}
	upstream.close();
	rmSync(persist, { recursive: true, force: true });
};
process.on("exit", stop);

const base = `http://127.0.0.1:${workerPort}`;
const deadline = Date.now() + 90_000;
for (;;) {
	try {
		if ((await fetch(`${base}/health`)).ok) break;
	} catch {}
	if (Date.now() > deadline) {
		log("wrangler dev did not answer /health:", devErr.slice(-2000));
		process.exit(1);
	}
	await new Promise((r) => setTimeout(r, 250));
}
const startupMs = Math.round(performance.now() - devStarted);
log(`wrangler dev is up after ${startupMs} ms`);

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
	routing: { heavyPromptTokens: 1024, heavyMaxTokens: 512, requestTimeoutMs: 60000, firstByteTimeoutMs: 5000, failoverAttempts: 3 },
	edgeModel: null, generation: 1, publishedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z"), ttlSeconds: 3600,
});
const up = (path) => `http://127.0.0.1:${upPort}/${path}`;
// The failing region sits in London (the default location), the healthy one in Mumbai.
await publish(route("plain", "mumbai", "m-plain", up("ok/plain"), 19.07, 72.88));
await publish(route("refused", "london", "m-refused", `http://127.0.0.1:${refusedPort}`, 51.5, -0.12));
await publish(route("refused", "mumbai", "m-refused", up("ok/refused"), 19.07, 72.88));
await publish(route("503", "london", "m-503", up("fail503/x"), 51.5, -0.12));
await publish(route("503", "mumbai", "m-503", up("ok/503"), 19.07, 72.88));

async function ttfb(url, model) {
	const started = performance.now();
	const res = await fetch(url, {
		method: "POST",
		headers: { "content-type": "application/json" },
		body: JSON.stringify({ model, stream: true, messages: [{ role: "user", content: "Hello" }] }),
	});
	const reader = res.body.getReader();
	await reader.read();
	const first = performance.now() - started;
	while (!(await reader.read()).done);
	return { ms: first, status: res.status, attempts: res.headers.get("x-backhaul-attempts") };
}
const pct = (xs, p) => {
	const s = [...xs].sort((a, b) => a - b);
	return +s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)].toFixed(2);
};
async function series(label, url, model, expectAttempts) {
	for (let i = 0; i < 10; i++) await ttfb(url, model); // warm-up
	const ms = [];
	for (let i = 0; i < N; i++) {
		const r = await ttfb(url, model);
		if (r.status !== 200 || (expectAttempts && r.attempts !== expectAttempts)) throw new Error(`${label}: status ${r.status}, attempts ${r.attempts}`);
		ms.push(r.ms);
	}
	const out = { p50: pct(ms, 50), p99: pct(ms, 99), mean: +(ms.reduce((a, b) => a + b, 0) / ms.length).toFixed(2) };
	log(label, JSON.stringify(out));
	return out;
}

const direct = await series("direct", up("ok/direct/v1/chat/completions"), "m-plain");
const viaWorker = await series("worker", `${base}/v1/chat/completions`, "m-plain", "1");
const afterRefused = await series("failover-refused", `${base}/v1/chat/completions`, "m-refused", "2");
const after503 = await series("failover-503", `${base}/v1/chat/completions`, "m-503", "2");
const summary = {
	requests: N,
	wranglerDevStartupMs: startupMs,
	ttfbMs: { direct, viaWorker, failoverRefused: afterRefused, failover503: after503 },
	addedByWorkerMs: { p50: +(viaWorker.p50 - direct.p50).toFixed(2), p99: +(viaWorker.p99 - direct.p99).toFixed(2) },
	addedByFailoverMs: {
		refused: { p50: +(afterRefused.p50 - viaWorker.p50).toFixed(2), p99: +(afterRefused.p99 - viaWorker.p99).toFixed(2) },
		status503: { p50: +(after503.p50 - viaWorker.p50).toFixed(2), p99: +(after503.p99 - viaWorker.p99).toFixed(2) },
	},
};
console.log(JSON.stringify(summary, null, 2));
process.exit(0);
