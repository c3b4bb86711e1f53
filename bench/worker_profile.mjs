#!/usr/bin/env node
// Where the Backhaul Worker's CPU time goes per request, under workerd:
// starts `wrangler dev --env local` (and the forward-only Worker,
// bench/passthrough, as the floor) against the local SSE upstream, connects
// to the runtime workerd's V8 inspector (its --inspector-addr, the socket
// wrangler's own inspector proxy reads), and records a sampling CPU profile
// (Profiler.start/stop, Chrome DevTools Protocol) while streamed chat
// completions go through each Worker one at a time.
//
// The bundled script's functions are mapped back to worker/src modules by
// esbuild's `// src/<file>.ts` markers in the bundle wrangler builds. Time
// in runtime built-ins (fetch, streams, Response, crypto: C++ called from
// JS) is charged to the Worker module that called them; "(program)" is the
// runtime outside JavaScript (HTTP, KJ event loop), "(garbage collector)"
// V8's GC. Counts are per request: sampled time / requests.
//
//   node bench/worker_profile.mjs [--requests 300] [--interval-us 100] [--port 8795] [--markdown FILE] [--save DIR] [--no-passthrough]
//   node bench/worker_profile.mjs --from RESULT.json [--markdown FILE]   (render an earlier run)
//
// Prints one JSON document on stdout; with --markdown, also writes the
// human-readable summary (docs/benchmarks/worker-profile.md is this).
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cpus, loadavg } from "node:os";
import { execFileSync } from "node:child_process";
import {
	arg, flag, logger, startUpstream, startBackhaul, startWrangler, sseOk, passthroughConfig, publish, route, once, groupCpu, TICK_MS, summary, repoRoot,
} from "./worker_harness.mjs";

const N = arg("requests", 300);
const INTERVAL_US = arg("interval-us", 100);
const port = arg("port", 8795);
const mdIdx = process.argv.indexOf("--markdown");
const markdownPath = mdIdx > 0 ? process.argv[mdIdx + 1] : null;
// --save DIR: also write the raw profiles (DIR/backhaul.cpuprofile, DIR/passthrough.cpuprofile; Chrome DevTools opens them).
const saveIdx = process.argv.indexOf("--save");
const saveDir = saveIdx > 0 ? process.argv[saveIdx + 1] : null;
const log = logger("profile");

// --from JSON: only render the markdown of an earlier run's output.
const fromIdx = process.argv.indexOf("--from");
if (fromIdx > 0) {
	const r = JSON.parse(readFileSync(process.argv[fromIdx + 1], "utf8"));
	if (markdownPath) writeFileSync(markdownPath, markdown(r));
	else console.log(markdown(r));
	process.exit(0);
}

const up = await startUpstream();
// wrangler dev's inspector proxies: --port + 2 and + 3.
const backhaul = { ...(await startBackhaul(port, log, ["--inspector-port", String(port + 2)])), inspectorPort: port + 2 };
await publish(backhaul.base, route("plain", "mumbai", "m-plain", up.url("ok/plain"), 19.07, 72.88));
const passthrough = flag("no-passthrough") ? null : {
	...(await startWrangler({
		label: "passthrough worker", port: port + 1, log, probe: sseOk,
		extra: ["--config", passthroughConfig, "--inspector-port", String(port + 3), "--var", `UPSTREAM:http://127.0.0.1:${up.port}/passthrough`],
	})),
	inspectorPort: port + 3,
};

/**
 * A CDP session on the Worker's isolate through wrangler dev's inspector
 * proxy (--inspector-port; workerd takes one inspector client per isolate,
 * and wrangler's proxy is it). The proxy wants a local Origin.
 */
async function inspect(inspectorPort) {
	const ws = new WebSocket(`ws://127.0.0.1:${inspectorPort}/ws`, { headers: { Origin: "http://127.0.0.1" } });
	await new Promise((resolve, reject) => {
		ws.onopen = resolve;
		ws.onerror = () => reject(new Error(`inspector websocket on ${inspectorPort} failed`));
	});
	let id = 0;
	const pending = new Map();
	const scripts = [];
	ws.onmessage = (ev) => {
		const msg = JSON.parse(ev.data);
		// workerd's answers to Profiler.* also carry the method: match on id.
		if (msg.method === "Debugger.scriptParsed") scripts.push(msg.params);
		else if (msg.id !== undefined && pending.has(msg.id)) {
			const { resolve, reject } = pending.get(msg.id);
			pending.delete(msg.id);
			msg.error ? reject(new Error(`${msg.error.message}`)) : resolve(msg.result);
		}
	};
	const send = (method, params = {}) =>
		new Promise((resolve, reject) => {
			pending.set(++id, { resolve, reject });
			ws.send(JSON.stringify({ id, method, params }));
		});
	return { send, scripts, close: () => ws.close() };
}

/** Line → worker/src module, from esbuild's `// src/x.ts` (or `// ../bench/...`) markers in the bundle. */
function moduleMap(source) {
	const marks = [];
	const lines = source.split("\n");
	lines.forEach((line, i) => {
		const m = /^\/\/ (\S+\.(?:ts|js|mjs))$/.exec(line);
		if (m) marks.push({ line: i, module: m[1].replace(/^(\.\.\/)+/, "").replace(/^.*node_modules\//, "") });
	});
	const lookup = (line) => {
		let mod = null;
		for (const m of marks) {
			if (m.line <= line) mod = m.module;
			else break;
		}
		return mod;
	};
	// An anonymous function's name: the variable its bundle line assigns it to, if any.
	lookup.text = (line) => /^\s*(?:const|let|var)\s+([\w$]+)\s*=/.exec(lines[line] ?? "")?.[1] ?? null;
	return lookup;
}

async function profileWorker(label, dev, url, model) {
	const cdp = await inspect(dev.inspectorPort);
	await cdp.send("Debugger.enable");
	// The bundle wrangler built (.wrangler/tmp/dev-*/index.js): its source, for the module markers.
	const sources = new Map();
	for (const s of cdp.scripts) {
		if (!s.url.includes("/.wrangler/tmp/")) continue;
		const { scriptSource } = await cdp.send("Debugger.getScriptSource", { scriptId: s.scriptId });
		sources.set(s.scriptId, moduleMap(scriptSource));
		if (saveDir) writeFileSync(join(saveDir, `${label.split(" ")[0]}.bundle.js`), scriptSource);
		log(`${label}: bundle ${s.url} (script ${s.scriptId})`);
	}
	if (sources.size === 0) throw new Error(`${label}: the Worker's bundle is not among the isolate's scripts`);
	await cdp.send("Debugger.disable");
	await cdp.send("Profiler.enable");
	await cdp.send("Profiler.setSamplingInterval", { interval: INTERVAL_US });
	for (let i = 0; i < 30; i++) await once(url, model); // warm-up (JIT, route cache)
	const c0 = groupCpu(dev.pgid);
	const t0 = performance.now();
	await cdp.send("Profiler.start");
	const ttfb = [];
	for (let i = 0; i < N; i++) {
		const r = await once(url, model);
		if (r.status !== 200) throw new Error(`${label}: status ${r.status}`);
		ttfb.push(r.ttfb);
	}
	const { profile } = await cdp.send("Profiler.stop");
	if (saveDir) writeFileSync(join(saveDir, `${label.split(" ")[0]}.cpuprofile`), JSON.stringify(profile));
	const wallMs = performance.now() - t0;
	const c1 = groupCpu(dev.pgid);
	await cdp.send("Profiler.disable");
	cdp.close();
	const cpuMsPerRequest = Object.fromEntries(Object.keys(c1).map((k) => [k, +(((c1[k] - (c0[k] ?? 0)) * TICK_MS) / N).toFixed(3)]));
	log(`${label}: ${N} requests profiled in ${Math.round(wallMs)} ms; CPU ms/request ${JSON.stringify(cpuMsPerRequest)}`);
	return { ...analyse(profile, sources, cpuMsPerRequest.workerd_runtime ?? 0), cpuMsPerRequest, ttfbMs: summary(ttfb), wallMs: Math.round(wallMs) };
}

const SPECIAL = new Set(["(root)", "(program)", "(idle)", "(garbage collector)"]);

/**
 * Self and total time per function, and per module (a built-in's samples go
 * to the nearest Worker module on its stack). workerd's sampler fires
 * unevenly on a loaded machine and rarely while the isolate waits, so a
 * sample's own time delta is no measure: every non-idle sample counts once,
 * and shares of them are turned into ms per request with the runtime
 * process's CPU time from /proc over the same requests.
 */
function analyse(profile, sources, runtimeCpuMsPerRequest) {
	const parent = new Map();
	for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
	const info = new Map();
	for (const n of profile.nodes) {
		const f = n.callFrame;
		const mapped = sources.get(f.scriptId);
		// An anonymous Worker function is named by what its bundle line assigns it to (`const pump = async () => …`).
		const assigned = mapped ? mapped.text(f.lineNumber) : null;
		const name = f.functionName || (assigned ? `(anonymous: ${assigned})` : "(anonymous)");
		const module = SPECIAL.has(name) ? name : mapped ? mapped(f.lineNumber) ?? "worker bundle (other)" : f.url || "runtime built-in";
		info.set(n.id, { key: SPECIAL.has(name) ? name : `${name} (${module}${mapped ? ` bundle line ${f.lineNumber + 1}` : ""})`, name, module, isUser: Boolean(mapped) });
	}
	const self = new Map();
	const total = new Map();
	const byModule = new Map();
	const bump = (m, k) => m.set(k, (m.get(k) ?? 0) + 1);
	let busy = 0;
	let idle = 0;
	for (const leaf of profile.samples) {
		const li = info.get(leaf);
		if (li.name === "(idle)") {
			idle++;
			continue;
		}
		busy++;
		bump(self, li.key);
		const seen = new Set();
		let owner = null;
		for (let id = leaf; id !== undefined; id = parent.get(id)) {
			const x = info.get(id);
			if (x.name === "(root)") break;
			if (!seen.has(x.key)) {
				seen.add(x.key);
				bump(total, x.key);
			}
			if (owner === null && (x.isUser || SPECIAL.has(x.name))) owner = x.module;
		}
		bump(byModule, owner ?? "runtime built-in, no Worker frame on the stack (stream and promise callbacks)");
	}
	const ms = (n) => +((n / busy) * runtimeCpuMsPerRequest).toFixed(3);
	const rows = (m, k, label) => [...m].sort((a, b) => b[1] - a[1]).slice(0, k).map(([key, n]) => ({ [label]: key, samples: n, share: +(n / busy).toFixed(4), msPerRequest: ms(n) }));
	return {
		busySamples: busy,
		idleSamples: idle,
		runtimeCpuMsPerRequest,
		byModule: rows(byModule, 50, "module"),
		topSelf: rows(self, 25, "function"),
		topTotal: rows(total, 25, "function"),
	};
}

const url = (dev) => `${dev.base}/v1/chat/completions`;
const result = {
	requests: N,
	samplingIntervalUs: INTERVAL_US,
	backhaul: await profileWorker("backhaul worker", backhaul, url(backhaul), "m-plain"),
	passthrough: passthrough ? await profileWorker("passthrough worker", passthrough, url(passthrough), "m-plain") : null,
	machine: { nproc: cpus().length, loadavg: loadavg().map((x) => +x.toFixed(2)) },
	commit: (() => {
		try {
			return execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: repoRoot, encoding: "utf8" }).trim();
		} catch {
			return null;
		}
	})(),
};
console.log(JSON.stringify(result, null, 2));
if (markdownPath) writeFileSync(markdownPath, markdown(result));
process.exit(0);

/** `(anonymous: const pump = /* @__PURE__ *\/ __name(async () =>)` → `(anonymous: pump)`. */
function cleanName(k) {
	if (!k.startsWith("(anonymous: ")) return k;
	const v = /^\(anonymous: (?:const|let|var)\s+([\w$]+)/.exec(k)?.[1];
	const where = /\s(\([^()]* bundle line \d+\))$/.exec(k)?.[1] ?? "";
	return `${v ? `(anonymous: ${v})` : "(anonymous)"} ${where}`.trim();
}

export function markdown(r) {
	const ms = (x) => x.toFixed(3);
	const pctS = (x) => `${(x * 100).toFixed(1)} %`;
	const L = [];
	const section = (title, p) => {
		L.push(`### ${title}`, "");
		L.push(`The runtime workerd used **${p.runtimeCpuMsPerRequest} ms CPU per request** (/proc, ${TICK_MS} ms ticks, while profiling); ${p.busySamples} busy samples (${p.idleSamples} idle ones left out). TTFB through wrangler dev while profiling: p50 ${ms(p.ttfbMs.p50)} ms, p99 ${ms(p.ttfbMs.p99)} ms.`, "");
		L.push("By module (a built-in's samples go to the Worker module that called it):", "", "| module | samples | share | ≈ ms per request |", "|---|---|---|---|");
		for (const m of p.byModule) L.push(`| ${m.module} | ${m.samples} | ${pctS(m.share)} | ${ms(m.msPerRequest)} |`);
		L.push("", "Top functions by self time:", "", "| function | samples | share | ≈ ms per request |", "|---|---|---|---|");
		for (const f of p.topSelf.slice(0, 15)) L.push(`| \`${cleanName(f.function)}\` | ${f.samples} | ${pctS(f.share)} | ${ms(f.msPerRequest)} |`);
		L.push("", "Top functions by total time (self and callees):", "", "| function | samples | share | ≈ ms per request |", "|---|---|---|---|");
		for (const f of p.topTotal.slice(0, 15)) L.push(`| \`${cleanName(f.function)}\` | ${f.samples} | ${pctS(f.share)} | ${ms(f.msPerRequest)} |`);
		L.push("");
	};
	L.push("# Where the routing Worker's CPU goes", "");
	L.push(`Generated by \`node bench/worker_profile.mjs --requests ${r.requests} --markdown docs/benchmarks/worker-profile.md\` (commit \`${r.commit}\`, ${r.machine.nproc} cores, load average ${r.machine.loadavg.join(" / ")} at the end).`, "");
	L.push(`A V8 sampling CPU profile (Profiler.start/stop over the inspector, ${r.samplingIntervalUs} µs interval) of the runtime workerd under \`wrangler dev --env local\`, while ${r.requests} streamed chat completions went through each Worker one at a time (the local SSE upstream of bench/routing.mjs: headers and a first chunk at once, three more 5 ms apart, then \`[DONE]\`; 30 warm-up requests before). workerd's sampler fires unevenly on a loaded machine and seldom while the isolate waits, so each busy sample counts once and its share is turned into ms with the runtime process's CPU time from /proc over the same requests (≈: an estimate, good to a few samples). Function names are the bundle's (esbuild may add a digit); modules come from the bundle's \`// src/...\` markers. \`runtime built-in\` is C++ behind a JavaScript API (fetch, streams, Headers, timers); in the module table its samples go to the Worker module that called it. \`(program)\` is workerd outside JavaScript (its HTTP stack and event loop), \`(garbage collector)\` V8's GC. wrangler's own middleware (\`wrangler/templates/middleware\`, \`.wrangler/tmp/bundle-*\`) wraps both Workers.`, "");
	L.push("Profiling costs CPU itself (the sampler and the inspector connection): the /proc figures below are higher than bench/routing.mjs's unprofiled ones. What this is for is the shares, and busy samples per request, which compare the two Workers taken alike.", "");
	L.push("| | runtime workerd CPU ms per request (profiled) | busy samples per request | TTFB p50 ms (profiled) |", "|---|---|---|---|");
	for (const [name, p] of [["Backhaul Worker", r.backhaul], ["forward-only Worker", r.passthrough]]) {
		if (p) L.push(`| ${name} | ${p.runtimeCpuMsPerRequest} | ${(p.busySamples / r.requests).toFixed(2)} | ${ms(p.ttfbMs.p50)} |`);
	}
	L.push("");
	section("Backhaul Worker", r.backhaul);
	if (r.passthrough) section("Forward-only Worker (bench/passthrough), the floor", r.passthrough);
	return L.join("\n");
}
