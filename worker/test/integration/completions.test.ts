/**
 * Issue 18's first slice: /v1/completions through the same routing and
 * failover as chat, request ids and trace context sent to every region and
 * returned to the client, the access log line, and non-text content parts
 * refused rather than dropped.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import type { AccessRecord } from "../../src/access-log";
import type { AiRunner } from "../../src/edge";
import { callWorker, chatBody, chatWith, deploy, errorOf, far, LONDON, near, upstreamHeaders, upstreamPaths } from "../client-helpers";
import { chat, completion, makeRoute, publish, ssePayloads, uid, upstream, upstreamCount } from "../helpers";

const completionBody = (model: string, extra: Record<string, unknown> = {}) => ({ model, prompt: "Once upon a time", ...extra });
const completionWith = (body: unknown, overrides: Record<string, unknown>, headers: Record<string, string> = {}) =>
	callWorker("/v1/completions", { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json", ...headers } }, overrides);

/** The concatenated `text` of a text_completion SSE body. */
const completionText = (sse: string) =>
	ssePayloads(sse)
		.filter((p) => p !== "[DONE]")
		.map((p) => (JSON.parse(p) as { choices?: { text?: string }[] }).choices?.[0]?.text ?? "")
		.join("");

/** Captures console.log; `records()` are the access log lines written so far, parsed. */
function captureAccessLog() {
	const spy = vi.spyOn(console, "log").mockImplementation(() => {});
	const lines = () => spy.mock.calls.map((c) => String(c[0]));
	return {
		lines,
		records: () =>
			lines()
				.filter((l) => l.startsWith("{"))
				.map((l) => JSON.parse(l) as AccessRecord)
				.filter((r) => r.event === "access"),
	};
}
afterEach(() => vi.restoreAllMocks());

describe("/v1/completions", () => {
	it("goes to the nearest region's /v1/completions and fails over from a 503 to the next", async () => {
		const { model, ids } = await deploy([near("status503"), far("ok")]);
		const res = await completion(completionBody(model), { cf: LONDON });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-backhaul-tier")).toBe("region");
		expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
		expect(res.headers.get("x-backhaul-attempts")).toBe("2");
		expect(await res.json()).toMatchObject({ object: "text_completion", choices: [{ text: `hello from ${ids[1]}` }] });
		// Both regions were asked on the completions path, not the chat one.
		expect(await upstreamPaths(ids[0]!)).toEqual(["/v1/completions"]);
		expect(await upstreamPaths(ids[1]!)).toEqual(["/v1/completions"]);
	});

	it("relays a streamed completion as SSE text_completion chunks ending in [DONE]", async () => {
		const { model, ids } = await deploy([near("ok")]);
		const res = await completion(completionBody(model, { stream: true }));
		expect(res.status).toBe(200);
		expect(res.headers.get("content-type")).toBe("text/event-stream");
		const text = await res.text();
		expect(completionText(text)).toBe(`hello from ${ids[0]} bye`);
		expect(JSON.parse(ssePayloads(text)[0]!)).toMatchObject({ object: "text_completion" });
		expect(ssePayloads(text).at(-1)).toBe("[DONE]");
	});

	it("ends a stream the region breaks off with an error event, as chat does", async () => {
		const { model } = await deploy([near("truncated")]);
		const payloads = ssePayloads(await (await completion(completionBody(model, { stream: true }))).text());
		expect(payloads.at(-1)).toBe("[DONE]");
		expect(JSON.parse(payloads.at(-2)!)).toMatchObject({ error: { code: "upstream_stream_truncated" } });
	});

	it("refuses a request without a string prompt (400 naming it) before any region is asked", async () => {
		const { model, ids } = await deploy([near("ok")]);
		for (const body of [{ model }, { model, prompt: 7 }, { model, prompt: ["a", "b"] }]) {
			const res = await completion(body);
			expect(res.status).toBe(400);
			expect((await errorOf(res)).param).toBe("prompt");
		}
		expect(await upstreamCount(ids[0]!)).toBe(0);
	});

	it("answers a light completion at the edge as a text_completion, and degrades to a region when the edge fails", async () => {
		const model = uid("edge-");
		const name = uid("md");
		await publish(makeRoute({ name, region: "r0", model, edgeModel: "@cf/meta/llama-3.2-1b-instruct", endpoint: upstream("ok", `${name}-r0`) }));
		const calls: Record<string, unknown>[] = [];
		const ai: AiRunner = {
			run: async (_m, inputs) => {
				calls.push(inputs);
				return { response: "edge text", usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 } };
			},
		};
		const edge = await completionWith(completionBody(model, { max_tokens: 8 }), { AI: ai });
		expect(edge.headers.get("x-backhaul-tier")).toBe("edge");
		expect(await edge.json()).toMatchObject({ object: "text_completion", model, choices: [{ text: "edge text", finish_reason: "stop" }], usage: { total_tokens: 6 } });
		// The prompt goes as it is: no chat template around it.
		expect(calls).toEqual([{ prompt: "Once upon a time", raw: true, stream: false, max_tokens: 8 }]);

		const failing: AiRunner = {
			run: async () => {
				throw new Error("3040: Capacity temporarily exceeded");
			},
		};
		const log = captureAccessLog();
		const fallback = await completionWith(completionBody(model), { AI: failing }, { "x-request-id": "edge-fallback" });
		expect(fallback.headers.get("x-backhaul-tier")).toBe("region");
		expect(fallback.headers.get("x-backhaul-attempts")).toBe("2");
		expect(await fallback.json()).toMatchObject({ object: "text_completion", choices: [{ text: `hello from ${name}-r0` }] });
		expect(await upstreamPaths(`${name}-r0`)).toEqual(["/v1/completions"]);
		// The access log has both upstreams, the edge first.
		const record = log.records().find((r) => r.request_id === "edge-fallback")!;
		expect(record).toMatchObject({ tier: "region", reason: "light", usage: { total_tokens: 7 } });
		expect(record.attempts.map((a) => [a.region, a.outcome.slice(0, 17)])).toEqual([
			["edge", "Workers AI failed"],
			["r0", "upstream 200"],
		]);
	});
});

describe("request ids and trace context", () => {
	const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
	const traceparentOf = (h: Record<string, unknown>) => String(h.traceparent);

	it("echoes the client's x-request-id and sends it, with the client's trace, to every region tried", async () => {
		const { model, ids } = await deploy([near("status503"), far("ok")]);
		const res = await chat(chatBody(model), { cf: LONDON, headers: { "x-request-id": "client req 42", traceparent: `00-${TRACE}-00f067aa0ba902b7-01` } });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-request-id")).toBe("client req 42");
		await res.body?.cancel();
		const [first, second] = [(await upstreamHeaders(ids[0]!))[0]!, (await upstreamHeaders(ids[1]!))[0]!];
		for (const h of [first, second]) {
			expect(h["x-request-id"]).toBe("client req 42");
			// The client's trace, a new span of it per attempt.
			expect(traceparentOf(h)).toMatch(new RegExp(`^00-${TRACE}-[0-9a-f]{16}-01$`));
			expect(traceparentOf(h)).not.toContain("00f067aa0ba902b7");
		}
		expect(traceparentOf(first)).not.toBe(traceparentOf(second));
	});

	it("replaces an invalid x-request-id and traceparent with its own, on successes and errors alike", async () => {
		const { model, ids } = await deploy([near("ok")]);
		const tooLong = "r".repeat(129);
		for (const [id, traceparent] of [
			[tooLong, `00-${"0".repeat(32)}-00f067aa0ba902b7-01`],
			["tab\tinside", `00-${TRACE.toUpperCase()}-00f067aa0ba902b7-01`],
			["", "garbage"],
		] as const) {
			const res = await chat(chatBody(model, { stream: true }), { headers: { "x-request-id": id, traceparent } });
			expect(res.status).toBe(200);
			const ours = res.headers.get("x-request-id")!;
			expect(ours).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
			await res.text();
			const seen = (await upstreamHeaders(ids[0]!)).at(-1)!;
			expect(seen["x-request-id"]).toBe(ours);
			const sent = traceparentOf(seen);
			expect(sent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
			expect(sent.slice(3, 35)).not.toBe(TRACE);
			expect(sent.slice(3, 35)).not.toBe("0".repeat(32));
		}
		// Errors carry one too: the Worker's own and a model that does not exist.
		const missing = await completion(completionBody(uid("nope-")), { headers: { "x-request-id": "err-1" } });
		expect(missing.status).toBe(404);
		expect(missing.headers.get("x-request-id")).toBe("err-1");
		const unknownPath = await callWorker("/v1/nothing-here", { method: "GET" }, {});
		expect(unknownPath.status).toBe(404);
		expect(unknownPath.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
	});
});

describe("access log", () => {
	it("writes one JSON line per request: id, hashed key, model, tier, each attempt with its TTFB, status, usage", async () => {
		const { model } = await deploy([near("status503"), far("ok")]);
		const log = captureAccessLog();
		const key = "key-for-the-access-log-0001";
		const res = await chatWith(chatBody(model), { BACKHAUL_API_KEYS: key }, { authorization: `Bearer ${key}`, "x-request-id": "log-1" }, LONDON);
		expect(res.status).toBe(200);
		await res.body?.cancel();
		const records = log.records().filter((r) => r.request_id === "log-1");
		expect(records).toHaveLength(1);
		const r = records[0]!;
		const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key)));
		const keyHash = [...digest].map((b) => b.toString(16).padStart(2, "0")).join("").slice(0, 16);
		expect(r).toMatchObject({
			event: "access",
			method: "POST",
			path: "/v1/chat/completions",
			status: 200,
			key_id_hash: keyHash,
			model,
			tier: "region",
			stream: false,
			usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 },
			cache: "none",
			stream_end: null,
		});
		expect(r.trace_id).toMatch(/^[0-9a-f]{32}$/);
		expect(r.attempts.map((a) => [a.region, a.outcome])).toEqual([
			["r0-status503", "upstream 503"],
			["r1-ok", "upstream 200"],
		]);
		for (const a of r.attempts) expect(a.ttfb_ms).toBeGreaterThanOrEqual(0);
		// Never the key itself, nor the region's token.
		expect(log.lines().join("\n")).not.toContain(key);
	});

	it("logs a relayed stream once it has ended, and the Worker's own errors", async () => {
		const { model } = await deploy([near("truncated")]);
		const log = captureAccessLog();
		const res = await completionWith(completionBody(model, { stream: true }), {}, { "x-request-id": "log-stream" });
		await res.text();
		await vi.waitFor(() => expect(log.records().find((r) => r.request_id === "log-stream")).toBeDefined());
		expect(log.records().find((r) => r.request_id === "log-stream")).toMatchObject({
			path: "/v1/completions",
			status: 200,
			stream: true,
			tier: "region",
			key_id_hash: null,
			stream_end: "truncated",
			attempts: [{ region: "r0-truncated", outcome: "upstream 200 streaming" }],
		});

		const refused = await callWorker("/v1/completions", { method: "POST", body: "{", headers: { "x-request-id": "log-400" } }, {});
		expect(refused.status).toBe(400);
		expect(log.records().filter((r) => r.request_id === "log-400")).toEqual([
			expect.objectContaining({ status: 400, model: null, tier: null, attempts: [], usage: null, cache: "none" }),
		]);
	});
});

describe("content parts", () => {
	it("refuses image parts with a 400 naming messages, at the edge and at a region, instead of dropping them", async () => {
		const { model, ids } = await deploy([near("ok")]);
		const edgeCalls: unknown[] = [];
		const ai: AiRunner = { run: async (_m, inputs) => (edgeCalls.push(inputs), { response: "edge" }) };
		const edgeModel = uid("edge-");
		await publish(makeRoute({ name: uid("md"), model: edgeModel, edgeModel: "@cf/meta/llama-3.2-1b-instruct", endpoint: upstream("ok", `${edgeModel}-r0`) }));
		const image = { type: "image_url", image_url: { url: "https://example.com/cat.png" } };
		const inputImage = { type: "input_image", image_url: "data:image/png;base64,AAAA" };
		for (const [m, part] of [
			[model, image],
			[edgeModel, image],
			[edgeModel, inputImage],
		] as const) {
			const res = await chatWith({ model: m, messages: [{ role: "user", content: [{ type: "text", text: "What is this?" }, part] }] }, { AI: ai });
			expect(res.status).toBe(400);
			const err = await errorOf(res);
			expect(err).toMatchObject({ type: "invalid_request_error", param: "messages", code: "unsupported_content_part" });
			expect(err.message).toContain(`'messages[0].content[1]' is a '${part.type}' part`);
		}
		expect(edgeCalls).toHaveLength(0);
		expect(await upstreamCount(ids[0]!)).toBe(0);
		// Text parts still go through.
		const text = await chat({ model, messages: [{ role: "user", content: [{ type: "text", text: "Hi" }] }] });
		expect(text.status).toBe(200);
		await text.body?.cancel();
	});
});
