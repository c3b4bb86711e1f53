/**
 * Simulated GPU regions for the integration tests: a real HTTP server on
 * 127.0.0.1 (vitest global setup, runs in Node). A route's endpoint picks the
 * behaviour: `{base}/{scenario}/{id}` so the Worker calls
 * `{base}/{scenario}/{id}/v1/chat/completions` (or `/v1/completions`: then
 * the answers are backhaul-inference's `text_completion` objects and chunks).
 * Non-streamed answers carry `usage` (3 + 4 = 7 tokens).
 *
 * Like backhaul-inference, every chat request must carry
 * `Authorization: Bearer TEST_UPSTREAM_TOKEN` (the token test routes carry):
 * without it, 401 whatever the scenario. Every request's headers are recorded.
 *
 * Scenarios: ok, status503, status429 (Retry-After: 30), slow (headers after
 * 3 s), midfail (two chunks, then the socket is destroyed), truncated (two
 * chunks, then a clean end without [DONE]), emptystream (200 headers, then the
 * socket is destroyed before any body), errorfirst / errorlater (an SSE error
 * event without [DONE], as backhaul-inference sends, before / after a chunk), gated (first chunk, then waits for
 * /control/release/{id}), hold (first chunk, then holds until the client goes).
 * Answers a region should not give: redirect (307 to /ok/{id}-target on this
 * server), forbidden (403 text/html, as Cloudflare Access refusing a caller),
 * html (200 text/html), htmlerror (400 text/html), jsonstream (200
 * application/json even to a streaming request), huge / hugeerror (200 / 400
 * application/json, HUGE_BYTES chunked, written as fast as the reader takes
 * them), hugedeclared (200 with a Content-Length of HUGE_BYTES), leaky (ok,
 * plus headers that must not reach the client: set-cookie, x-powered-by,
 * server, access-control-allow-origin, and an x-request-id that may),
 * longrequestid (ok, with a 300-character x-request-id).
 * Control: /control/count/{id} (requests seen), /control/headers/{id} (the
 * headers of each request seen, JSON), /control/paths/{id} (the path after
 * `{scenario}/{id}` of each request seen, JSON), /control/bodies/{id} (the
 * body of each request seen, as text, JSON), /control/release/{id},
 * /control/closed/{id} (answers once the upstream connection of {id} closed;
 * 504 after 10 s), /control/sent/{id} (once closed: how many body bytes a
 * huge scenario wrote, JSON {written, total, finished}).
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { TestProject } from "vitest/node";

declare module "vitest" {
	export interface ProvidedContext {
		upstreamPort: number;
		refusedPort: number;
	}
}

/** Keep equal to TEST_UPSTREAM_TOKEN in test/helpers.ts (that file runs in workerd, this one in Node). */
export const TEST_UPSTREAM_TOKEN = "test-upstream-token-0123456789";
/** The body size of the huge scenarios: far over the Worker's 4 MiB default cap. */
export const HUGE_BYTES = 128 * 1024 * 1024;

const counts = new Map<string, number>();
const headersSeen = new Map<string, IncomingHttpHeaders[]>();
const pathsSeen = new Map<string, string[]>();
const bodiesSeen = new Map<string, string[]>();
const sent = new Map<string, { written: number; total: number; finished: boolean }>();
const releases = new Map<string, () => void>();
const closed = new Map<string, Promise<void>>();
const closedResolvers = new Map<string, () => void>();

function closedPromise(id: string): Promise<void> {
	if (!closed.has(id)) closed.set(id, new Promise<void>((resolve) => closedResolvers.set(id, resolve)));
	return closed.get(id)!;
}

/** One SSE event of a chat stream, or (`completions`) of a legacy completion stream as backhaul-inference sends it. */
const chunk = (id: string, text: string, completions = false) =>
	`data: ${JSON.stringify(
		completions
			? { id: "cmpl-up", object: "text_completion", created: 1, model: "m", system_fingerprint: null, choices: [{ index: 0, text, logprobs: null, finish_reason: null }] }
			: { id: "chatcmpl-up", object: "chat.completion.chunk", created: 1, model: "m", choices: [{ index: 0, delta: { content: text }, finish_reason: null }] },
	)}\n\n`;

const USAGE = { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 };

async function readBody(req: IncomingMessage): Promise<string> {
	let s = "";
	for await (const c of req) s += c;
	return s;
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
	const parts = (req.url ?? "/").split("/").filter(Boolean);
	if (parts[0] === "control") {
		const [, what, id = ""] = parts;
		if (what === "count") return void res.end(String(counts.get(id) ?? 0));
		if (what === "headers") {
			res.writeHead(200, { "content-type": "application/json" });
			return void res.end(JSON.stringify(headersSeen.get(id) ?? []));
		}
		if (what === "paths") {
			res.writeHead(200, { "content-type": "application/json" });
			return void res.end(JSON.stringify(pathsSeen.get(id) ?? []));
		}
		if (what === "bodies") {
			res.writeHead(200, { "content-type": "application/json" });
			return void res.end(JSON.stringify(bodiesSeen.get(id) ?? []));
		}
		if (what === "sent") {
			const timer = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 10_000));
			const result = await Promise.race([closedPromise(id).then(() => "closed" as const), timer]);
			res.writeHead(result === "closed" ? 200 : 504, { "content-type": "application/json" });
			return void res.end(JSON.stringify(sent.get(id) ?? null));
		}
		if (what === "release") {
			releases.get(id)?.();
			return void res.end("released");
		}
		if (what === "closed") {
			const timer = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 10_000));
			const result = await Promise.race([closedPromise(id).then(() => "closed" as const), timer]);
			res.statusCode = result === "closed" ? 200 : 504;
			return void res.end(result);
		}
	}
	const [scenario = "", id = ""] = parts;
	const path = `/${parts.slice(2).join("/")}`;
	const completions = path === "/v1/completions";
	counts.set(id, (counts.get(id) ?? 0) + 1);
	headersSeen.set(id, [...(headersSeen.get(id) ?? []), req.headers]);
	pathsSeen.set(id, [...(pathsSeen.get(id) ?? []), path]);
	const body = await readBody(req);
	bodiesSeen.set(id, [...(bodiesSeen.get(id) ?? []), body]);
	const stream = (JSON.parse(body || "{}") as { stream?: boolean }).stream === true;
	res.on("close", () => {
		closedPromise(id);
		closedResolvers.get(id)?.();
	});
	if (req.headers.authorization !== `Bearer ${TEST_UPSTREAM_TOKEN}`) {
		res.writeHead(401, { "content-type": "application/json", "www-authenticate": "Bearer" });
		return void res.end(JSON.stringify({ error: { message: "missing or invalid bearer token", type: "authentication_error", code: "invalid_api_key", param: null } }));
	}
	switch (scenario) {
		case "redirect":
			res.writeHead(307, { location: `http://${req.headers.host}/ok/${id}-target/v1/chat/completions` });
			return void res.end();
		case "forbidden":
			res.writeHead(403, { "content-type": "text/html" });
			return void res.end("<html><body>Forbidden</body></html>");
		case "html":
			res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
			return void res.end("<html><script>alert(1)</script></html>");
		case "htmlerror":
			res.writeHead(400, { "content-type": "text/html" });
			return void res.end("<html><body>Bad Request</body></html>");
		case "jsonstream":
			res.writeHead(200, { "content-type": "application/json" });
			return void res.end(JSON.stringify({ object: "chat.completion", choices: [] }));
		case "huge":
			return writeHuge(res, id, 200);
		case "hugeerror":
			return writeHuge(res, id, 400);
		case "hugedeclared":
			return writeHuge(res, id, 200, true);
		case "status503":
			res.writeHead(503, { "content-type": "application/json" });
			return void res.end(JSON.stringify({ error: { message: "overloaded", type: "server_error" } }));
		case "status429":
			res.writeHead(429, { "content-type": "application/json", "retry-after": "30" });
			return void res.end(JSON.stringify({ error: { message: "saturated", type: "rate_limit_error" } }));
		case "badrequest":
			res.writeHead(400, { "content-type": "application/json" });
			return void res.end(JSON.stringify({ error: { message: "upstream says no", type: "invalid_request_error", code: "invalid_argument", param: "messages" } }));
		case "slow":
			await new Promise((r) => setTimeout(r, 3000));
			break;
	}
	const leaky: Record<string, string> =
		scenario === "leaky"
			? {
					"set-cookie": "region_session=secret; Path=/",
					"x-powered-by": "Express",
					server: "nginx/1.25",
					"access-control-allow-origin": "*",
					"x-request-id": `req-${id}`,
				}
			: scenario === "longrequestid"
				? { "x-request-id": "r".repeat(300) }
				: {};
	if (!stream) {
		res.writeHead(200, { "content-type": "application/json", ...leaky });
		return void res.end(
			JSON.stringify(
				completions
					? {
							id: "cmpl-up",
							object: "text_completion",
							created: 1,
							model: "m",
							system_fingerprint: null,
							choices: [{ index: 0, text: `hello from ${id}`, logprobs: null, finish_reason: "stop" }],
							usage: USAGE,
						}
					: {
							id: "chatcmpl-up",
							object: "chat.completion",
							created: 1,
							model: "m",
							choices: [{ index: 0, message: { role: "assistant", content: `hello from ${id}` }, finish_reason: "stop" }],
							usage: USAGE,
						},
			),
		);
	}
	res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", ...leaky });
	if (scenario === "errorfirst") {
		// as backhaul-inference does when generation fails: an error event, no [DONE]
		return void res.end(`data: ${JSON.stringify({ error: { message: "engine failed", type: "server_error", code: "engine_error", param: null } })}\n\n`);
	}
	if (scenario === "errorlater") {
		res.write(chunk(id, `hello from ${id}`, completions));
		return void res.end(`data: ${JSON.stringify({ error: { message: "deadline exceeded", type: "server_error", code: "deadline_exceeded", param: null } })}\n\n`);
	}
	if (scenario === "emptystream") {
		res.flushHeaders();
		setTimeout(() => res.destroy(), 20);
		return;
	}
	res.write(chunk(id, `hello from ${id}`, completions));
	switch (scenario) {
		case "midfail":
			res.write(chunk(id, " and then", completions));
			setTimeout(() => res.destroy(), 50);
			return;
		case "truncated":
			res.write(chunk(id, " and then", completions));
			return void res.end();
		case "gated":
			await new Promise<void>((r) => releases.set(id, r));
			break;
		case "hold":
			return; // until the client goes away
	}
	res.write(chunk(id, " bye", completions));
	res.end("data: [DONE]\n\n");
}

/** HUGE_BYTES of JSON-looking body, written only as fast as the reader takes it; what was written is in `sent`. */
async function writeHuge(res: ServerResponse, id: string, status: number, declareLength = false): Promise<void> {
	const record = { written: 0, total: HUGE_BYTES, finished: false };
	sent.set(id, record);
	const open = '{"error":{"message":"', close = '"}}';
	const piece = Buffer.alloc(64 * 1024, 0x61);
	const headers: Record<string, string> = { "content-type": "application/json" };
	if (declareLength) headers["content-length"] = String(open.length + HUGE_BYTES + close.length);
	res.writeHead(status, headers);
	const gone = new Promise<void>((r) => res.once("close", () => r()));
	res.write(open);
	while (record.written < HUGE_BYTES) {
		if (res.destroyed) return;
		const more = res.write(piece);
		record.written += piece.length;
		if (!more) await Promise.race([new Promise<void>((r) => res.once("drain", () => r())), gone]);
	}
	res.end(close);
	record.finished = true;
}

export default async function setup(project: TestProject) {
	const server = createServer((req, res) => {
		handle(req, res).catch((err) => {
			res.statusCode = 500;
			res.end(String(err));
		});
	});
	await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
	// A port with nothing listening: connections to it are refused.
	const probe = createServer();
	await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
	const refusedPort = (probe.address() as AddressInfo).port;
	await new Promise<void>((r) => probe.close(() => r()));

	project.provide("upstreamPort", (server.address() as AddressInfo).port);
	project.provide("refusedPort", refusedPort);
	return async () => {
		server.closeAllConnections();
		await new Promise<void>((r) => server.close(() => r()));
	};
}
