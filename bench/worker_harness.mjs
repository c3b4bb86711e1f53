// Shared by the Worker's local benchmarks (bench/routing.mjs,
// bench/worker_profile.mjs): a Node SSE upstream, `wrangler dev` started in
// its own process group and stopped on exit, the runtime workerd's own
// entry and inspector sockets, signed route publication, one streamed chat
// completion with its timings, percentiles, and CPU time per process.
// Everything binds 127.0.0.1.
import { execFileSync, spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { createServer } from "node:http";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
export const workerDir = join(repoRoot, "worker");
export const passthroughConfig = join(repoRoot, "bench", "passthrough", "wrangler.jsonc");

/** `--name value` from argv as a number, else `dflt`; `--name` alone as a flag. */
export const arg = (name, dflt) => {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
export const flag = (name) => process.argv.includes(`--${name}`);
export const logger = (tag) => (...a) => console.error(`[${tag}]`, ...a);

const cleanups = [];
process.on("exit", () => {
	for (const f of cleanups.reverse()) {
		try {
			f();
		} catch {}
	}
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

/** One SSE chunk as a region sends it. */
export const sseChunk = (t) => `data: {"choices":[{"index":0,"delta":{"content":"${t}"}}]}\n\n`;

/**
 * The upstream: headers and the first SSE chunk at once, three more 5 ms
 * apart, then [DONE]. /fail503/ and /fail429/ answer at once with that
 * status (429 with Retry-After: 0, so the Worker's cooldown is 1 ms and
 * every request tries the saturated region again); /slow/ holds its headers
 * 2 s. Also a port that refuses connections.
 */
export async function startUpstream() {
	const server = createServer((req, res) => {
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
				res.write(sseChunk("a"));
				let i = 0;
				const t = setInterval(() => {
					if (++i <= 3) return void res.write(sseChunk("b"));
					clearInterval(t);
					res.end("data: [DONE]\n\n");
				}, 5);
			};
			if (req.url.startsWith("/slow/")) setTimeout(respond, 2000);
			else respond();
		});
	});
	server.keepAliveTimeout = 60_000;
	await new Promise((r) => server.listen(0, "127.0.0.1", r));
	cleanups.push(() => server.close());
	const port = server.address().port;
	const refused = createServer();
	await new Promise((r) => refused.listen(0, "127.0.0.1", r));
	const refusedPort = refused.address().port;
	await new Promise((r) => refused.close(r));
	return { port, refusedUrl: `http://127.0.0.1:${refusedPort}`, url: (path) => `http://127.0.0.1:${port}/${path}` };
}

function pgrpOf(stat) {
	return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
}

/** The runtime workerd (the one running the Worker, not wrangler's proxy) in process group `pgid`. */
export function runtimeProcesses(pgid) {
	return readdirSync("/proc").filter((p) => /^\d+$/.test(p)).flatMap((pid) => {
		try {
			const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
			const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
			if (pgrpOf(stat) !== pgid || !cmd.includes("workerd") || !cmd.includes("entry=127.0.0.1:0")) return [];
			return [{ pid: Number(pid), inspectorAddr: null }];
		} catch {
			return [];
		}
	});
}

// wrangler dev runs two workerd processes: its proxy on --port, and the
// runtime running the Worker, whose own entry socket listens on a port
// picked at start. Requests to that socket skip wrangler's proxy.
function listeningPorts(pid) {
	let ss = "";
	try {
		ss = execFileSync("ss", ["-ltnpH"], { encoding: "utf8" });
	} catch {}
	return ss.split("\n").filter((l) => l.includes(`pid=${pid},`)).map((l) => l.match(/127\.0\.0\.1:(\d+)/)?.[1]).filter(Boolean);
}

/**
 * Starts `wrangler dev` (cwd worker/ or `cwd`, its own process group, stopped on exit)
 * on 127.0.0.1:`port` and waits until `probe(base)` is true. Returns its
 * base URL, the runtime's own entry (or null), the runtime's pid and
 * inspector address, and how long it took to come up.
 */
export async function startWrangler({ label, port, extra = [], probe, log = logger("bench"), cwd = workerDir }) {
	const started = performance.now();
	const persist = mkdtempSync(join(tmpdir(), "backhaul-bench-"));
	const dev = spawn("npx", ["wrangler", "dev", "--ip", "127.0.0.1", "--port", String(port), "--persist-to", persist, "--log-level", "error", ...extra],
		{ cwd, stdio: ["ignore", "ignore", "pipe"], detached: true });
	cleanups.push(() => rmSync(persist, { recursive: true, force: true }));
	cleanups.push(() => process.kill(-dev.pid, "SIGTERM"));
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
	const runtime = runtimeProcesses(dev.pid)[0] ?? null;
	let runtimeBase = null;
	for (const p of runtime ? listeningPorts(runtime.pid) : []) {
		try {
			if (await probe(`http://127.0.0.1:${p}`)) {
				runtimeBase = `http://127.0.0.1:${p}`;
				break;
			}
		} catch {}
	}
	// Its inspector (--inspector-addr=127.0.0.1:0): the listening port that answers /json.
	for (const p of runtime ? listeningPorts(runtime.pid) : []) {
		if (`http://127.0.0.1:${p}` === runtimeBase) continue;
		try {
			const r = await fetch(`http://127.0.0.1:${p}/json`, { signal: AbortSignal.timeout(2000) });
			if (r.ok && Array.isArray(await r.json())) {
				runtime.inspectorAddr = `127.0.0.1:${p}`;
				break;
			}
		} catch {}
	}
	log(`${label}: wrangler dev is up after ${startupMs} ms; runtime entry ${runtimeBase ?? "not found"}, inspector ${runtime?.inspectorAddr ?? "not found"}`);
	return { dev, pgid: dev.pid, base, runtimeBase, runtime, startupMs };
}

export const healthOk = async (b) => {
	const r = await fetch(`${b}/health`, { signal: AbortSignal.timeout(2000) });
	return r.ok && (await r.text()).includes('"ok"');
};
export const sseOk = async (b) => {
	const r = await fetch(`${b}/v1/chat/completions`, { method: "POST", body: "{}", signal: AbortSignal.timeout(2000) });
	await r.arrayBuffer();
	return r.ok && (r.headers.get("content-type") ?? "").includes("text/event-stream");
};

/**
 * The bench's publisher: an Ed25519 key made per run (docs/publication.md,
 * "Publisher keys and signatures"), allowed every namespace, region and host.
 */
const benchKey = generateKeyPairSync("ed25519");
export const BENCH_KEY_ID = "bench";
export const BENCH_PUBLISHERS = JSON.stringify([
	{
		id: BENCH_KEY_ID,
		publicKey: Buffer.from(benchKey.publicKey.export({ format: "jwk" }).x, "base64url").toString("base64"),
		namespaces: ["*"],
		regions: ["*"],
	},
]);

/** The Backhaul Worker under `wrangler dev --env local`, open API, London as the default location, the bench's publisher key. */
export const startBackhaul = (port, log, extra = [], cwd = workerDir, label = "backhaul worker") =>
	startWrangler({
		label,
		port,
		log,
		cwd,
		probe: healthOk,
		extra: [
			...extra, "--env", "local", "--var", `BACKHAUL_PUBLISHERS:${BENCH_PUBLISHERS}`, "--var", "DEFAULT_LOCATION:51.5,-0.1",
			"--var", "BACKHAUL_API_KEYS:", "--var", "ALLOW_ANONYMOUS:true",
		],
	});

/** `X-Backhaul-Signature`: Ed25519 over "backhaul-v2.{keyId}.{timestamp}.{METHOD}.{path}." + body. */
export function signAdmin(method, path, body, ts = String(Math.floor(Date.now() / 1000)), keyId = BENCH_KEY_ID, privateKey = benchKey.privateKey) {
	const payload = Buffer.concat([Buffer.from(`backhaul-v2.${keyId}.${ts}.${method.toUpperCase()}.${path}.`), Buffer.from(body)]);
	return { "x-backhaul-key-id": keyId, "x-backhaul-timestamp": ts, "x-backhaul-signature": `ed25519=${sign(null, payload, privateKey).toString("base64")}` };
}

/** PUTs a route through the signed admin API (docs/publication.md). */
export async function publish(base, route) {
	const path = `/admin/v1/routes/${route.namespace}/${route.name}/${route.region}`;
	const body = JSON.stringify(route);
	const res = await fetch(base + path, { method: "PUT", body, headers: { "content-type": "application/json", ...signAdmin("PUT", path, body) } });
	if (res.status !== 200) throw new Error(`publish ${path}: ${res.status} ${await res.text()}`);
}

// Each route write needs a higher sequence than the last (docs/publication.md, "Ordering").
let lastSequence = 0;
const nextSequence = () => (lastSequence = Math.max(lastSequence + 1, Date.now()));
// The region credential the routes carry (the bench's upstream does not check it).
const BENCH_UPSTREAM_TOKEN = randomBytes(32).toString("base64url");

export const route = (name, region, model, endpoint, latitude, longitude, firstByteTimeoutMs = 5000) => ({
	namespace: "bench", name, region, model, endpoint, location: { latitude, longitude }, replicas: 1, readyReplicas: 1,
	routing: { heavyPromptTokens: 1024, heavyMaxTokens: 512, requestTimeoutMs: 60000, firstByteTimeoutMs, failoverAttempts: 3 },
	edgeModel: null, generation: 1, sequence: nextSequence(), publishedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z"), ttlSeconds: 3600,
	upstreamToken: BENCH_UPSTREAM_TOKEN,
});

export const chatBody = (model) => JSON.stringify({ model, stream: true, messages: [{ role: "user", content: "Hello" }] });

/** One streamed request: ms to the first body chunk and to the end of the body. */
export async function once(url, model) {
	const started = performance.now();
	const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: chatBody(model) });
	const reader = res.body.getReader();
	const first = await reader.read();
	const ttfb = performance.now() - started;
	// An error's body says why (kept only then).
	let body = res.status === 200 || first.done ? "" : new TextDecoder().decode(first.value);
	for (let c; !(c = await reader.read()).done; ) if (res.status !== 200) body += new TextDecoder().decode(c.value);
	return { ttfb, total: performance.now() - started, status: res.status, attempts: res.headers.get("x-backhaul-attempts"), body };
}

/** The failed attempt alone, straight at the failing upstream: until fetch settles (an error, or the whole body). */
export async function failedAlone(url) {
	const started = performance.now();
	try {
		const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: chatBody("x") });
		await res.arrayBuffer();
	} catch {}
	return performance.now() - started;
}

export const pct = (xs, p) => {
	const s = [...xs].sort((a, b) => a - b);
	return +s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))].toFixed(3);
};
export const summary = (xs) => ({ p50: pct(xs, 50), p99: pct(xs, 99), mean: +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3), samples: xs.length });

/**
 * CPU time (user + system, in clock ticks of TICK_MS) of every process in
 * process group `pgid`, by name: node (wrangler), workerd_proxy (its proxy),
 * workerd_runtime (the runtime running the Worker).
 */
export const TICK_MS = 10; // Linux USER_HZ is 100
export function groupCpu(pgid) {
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
		if (Number(f[2]) !== pgid) continue;
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
