/** The response cache's pure parts: the key, the decision, capturing and replaying an answer. */
import { describe, expect, it, vi } from "vitest";
import { cacheKey, cacheKeyMaterial, canonicalJson } from "../../src/cache-key";
import { cacheDecision, MAX_CACHE_TTL_SECONDS, parseCacheModels, parseTtlHeader } from "../../src/cache-policy";
import { completionBody, fromCompletion, parseCachedAnswer, replayEvents, StreamCollector, type CachedAnswer } from "../../src/cached-answer";
import { board, Flight, land } from "../../src/coalesce";
import { parseChatRequest, parseCompletionRequest } from "../../src/request";

const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const chatReq = (extra: Record<string, unknown> = {}) => parseChatRequest(enc({ model: "m", messages: [{ role: "user", content: "Hi" }], temperature: 0, ...extra }));

describe("cache key", () => {
	it("is canonical: field order and null fields do not matter", () => {
		expect(canonicalJson({ b: 1, a: [1, { d: null, c: "x" }], e: null })).toBe('{"a":[1,{"c":"x"}],"b":1}');
		const a = parseChatRequest(new TextEncoder().encode('{"model":"m","temperature":0,"messages":[{"role":"user","content":"Hi"}],"stop":null}'));
		const b = parseChatRequest(new TextEncoder().encode('{"messages":[{"content":"Hi","role":"user"}],"temperature":0,"model":"m"}'));
		expect(cacheKeyMaterial(a, "k")).toBe(cacheKeyMaterial(b, "k"));
	});

	it("ignores stream, stream_options and labels; a single text part is its text; the two max-token fields are one", async () => {
		const base = await cacheKey(chatReq({ max_tokens: 10 }), "k");
		expect(await cacheKey(chatReq({ max_tokens: 10, stream: true, stream_options: { include_usage: true }, user: "u" }), "k")).toBe(base);
		// Labels and OpenAI's prompt-cache hints: neither tier reads them.
		const hints = { safety_identifier: "s", metadata: { a: "b" }, store: true, prompt_cache_key: "conv-1", prompt_cache_retention: "24h", prompt_cache_options: {} };
		expect(await cacheKey(chatReq({ max_tokens: 10, ...hints }), "k")).toBe(base);
		expect(await cacheKey(chatReq({ max_completion_tokens: 10 }), "k")).toBe(base);
		expect(await cacheKey(chatReq({ max_tokens: 10, messages: [{ role: "user", content: [{ type: "text", text: "Hi" }] }] }), "k")).toBe(base);
		expect(base).toMatch(/^[0-9a-f]{64}$/);
	});

	it("separates everything that changes the answer, and the scope", async () => {
		const base = await cacheKey(chatReq(), "k");
		const variants = [
			chatReq({ model: "m2" }),
			chatReq({ messages: [{ role: "user", content: "Hi!" }] }),
			chatReq({ temperature: 0.5 }),
			chatReq({ top_p: 0.9 }),
			chatReq({ top_k: 5 }),
			chatReq({ min_p: 0.1 }),
			chatReq({ max_tokens: 5 }),
			chatReq({ stop: ["x"] }),
			chatReq({ presence_penalty: 1 }),
			chatReq({ frequency_penalty: 1 }),
			chatReq({ seed: 1 }),
			chatReq({ response_format: { type: "json_object" } }),
			chatReq({ tools: [{ type: "function", function: { name: "f" } }] }),
			chatReq({ some_future_field: true }),
		];
		const keys = new Set([base, ...(await Promise.all(variants.map((v) => cacheKey(v, "k"))))]);
		expect(keys.size).toBe(variants.length + 1);
		expect(await cacheKey(chatReq(), "other")).not.toBe(base);
		const completion = parseCompletionRequest(enc({ model: "m", prompt: "Hi", temperature: 0 }));
		expect(await cacheKey(completion, "k")).not.toBe(base);
		expect(await cacheKey(parseCompletionRequest(enc({ model: "m", prompt: ["Hi"], temperature: 0 })), "k")).toBe(await cacheKey(completion, "k"));
	});
});

describe("cache decision", () => {
	const models = parseCacheModels('{"m": {"ttlSeconds": 60}, "s": {"ttlSeconds": 30, "shared": true}, "off": {"ttlSeconds": 0}}');
	const decide = (raw: Record<string, unknown>, o: { model?: string; skip?: string; ttl?: number | null; def?: number } = {}) =>
		cacheDecision({ raw, model: o.model ?? "m", skipHeader: o.skip ?? null, ttlHeader: o.ttl ?? null, models, defaultTtlSeconds: o.def ?? 0 });

	it("caches greedy requests for the model's TTL, shared only where configured", () => {
		expect(decide({ temperature: 0 })).toEqual({ kind: "cache", ttlSeconds: 60, shared: false });
		expect(decide({ temperature: 0 }, { model: "s" })).toEqual({ kind: "cache", ttlSeconds: 30, shared: true });
	});

	it("leaves sampled, multi-choice, logprob and unconfigured requests alone", () => {
		expect(decide({})).toEqual({ kind: "none" });
		expect(decide({ temperature: 0.7 })).toEqual({ kind: "none" });
		expect(decide({ temperature: 0, n: 2 })).toEqual({ kind: "none" });
		expect(decide({ temperature: 0, logprobs: true })).toEqual({ kind: "none" });
		expect(decide({ temperature: 0 }, { model: "unconfigured" })).toEqual({ kind: "none" });
		expect(decide({ temperature: 0 }, { model: "off" })).toEqual({ kind: "none" });
		expect(decide({ temperature: 0 }, { model: "unconfigured", def: 10 })).toEqual({ kind: "cache", ttlSeconds: 10, shared: false });
	});

	it("takes the client's opt-in TTL and skip header", () => {
		expect(decide({ temperature: 0.7 }, { model: "unconfigured", ttl: 5 })).toEqual({ kind: "cache", ttlSeconds: 5, shared: false });
		expect(decide({ temperature: 0 }, { ttl: 0 })).toEqual({ kind: "none" });
		expect(decide({ temperature: 0 }, { skip: "true" })).toEqual({ kind: "bypass" });
		expect(decide({ temperature: 0 }, { skip: "false" }).kind).toBe("cache");
		expect(parseTtlHeader(null)).toBeNull();
		expect(parseTtlHeader("30")).toBe(30);
		expect(parseTtlHeader("99999999")).toBe(MAX_CACHE_TTL_SECONDS);
		for (const bad of ["-1", "1.5", "soon", ""]) expect(() => parseTtlHeader(bad)).toThrow(/x-backhaul-cache-ttl/);
	});

	it("ignores a CACHE_MODELS that does not parse, as a whole", () => {
		const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
		for (const bad of ["[", "[]", '{"m": 5}', '{"m": {"ttlSeconds": -1}}', '{"m": {"ttlSeconds": 1, "shared": "yes"}}', '{"m": {"ttl": 1}}']) {
			expect(parseCacheModels(bad).size).toBe(0);
		}
		expect(parseCacheModels(undefined).size).toBe(0);
		expect(warn).toHaveBeenCalledTimes(6);
		warn.mockRestore();
	});
});

describe("cached answers", () => {
	const answer: CachedAnswer = { v: 1, api: "chat", id: "c1", model: "m", created: 5, text: "hello bye", finishReason: "stop", usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } };

	it("captures a one-choice text completion and nothing else", () => {
		const body = { id: "c1", object: "chat.completion", created: 5, model: "m", choices: [{ index: 0, message: { role: "assistant", content: "hello bye" }, finish_reason: "stop" }], usage: answer.usage };
		expect(fromCompletion("chat", body, "x", 9)).toEqual(answer);
		expect(completionBody(answer)).toEqual(body);
		expect(fromCompletion("chat", { ...body, choices: [body.choices[0], body.choices[0]] }, "x", 9)).toBeNull();
		expect(fromCompletion("chat", { ...body, choices: [{ index: 0, message: { role: "assistant", content: null, tool_calls: [{}] }, finish_reason: "tool_calls" }] }, "x", 9)).toBeNull();
		const text = { id: "t", object: "text_completion", created: 1, model: "m", choices: [{ index: 0, text: "hi", logprobs: null, finish_reason: "length" }] };
		expect(completionBody(fromCompletion("completions", text, "x", 9)!)).toEqual(text);
	});

	it("collects a stream that ended with [DONE], whatever its chunking, and replays it with the same shapes", () => {
		const events = replayEvents(answer, true);
		const sse = events.join("");
		for (const size of [1, 7, sse.length]) {
			const c = new StreamCollector("chat", "m");
			const bytes = new TextEncoder().encode(sse);
			for (let i = 0; i < bytes.length; i += size) c.push(bytes.slice(i, i + size));
			expect(c.answer(9)).toEqual(answer);
		}
		const payloads = events.map((e) => e.slice(6).trim());
		expect(payloads.at(-1)).toBe("[DONE]");
		const chunks = payloads.slice(0, -1).map((p) => JSON.parse(p) as { object: string; choices: { delta: unknown; finish_reason: unknown }[]; usage?: unknown });
		expect(chunks.map((c) => c.object)).toEqual(Array(4).fill("chat.completion.chunk"));
		expect(chunks.map((c) => c.choices[0]?.delta)).toEqual([{ role: "assistant", content: "" }, { content: "hello bye" }, {}, undefined]);
		expect(chunks[3]!.usage).toEqual(answer.usage);
		expect(replayEvents(answer, false)).toHaveLength(4);
		expect(parseCachedAnswer(JSON.parse(JSON.stringify(answer)))).toEqual(answer);
		expect(parseCachedAnswer({ ...answer, v: 2 })).toBeNull();
	});

	it("does not collect a stream without [DONE], with an error event, or with a second choice", () => {
		const ok = 'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n';
		const cases = [
			ok,
			ok + 'data: {"error":{"message":"x"}}\n\ndata: [DONE]\n\n',
			ok + 'data: {"choices":[{"index":1,"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n',
			ok + "data: not json\n\ndata: [DONE]\n\n",
		];
		for (const sse of cases) {
			const c = new StreamCollector("chat", "m");
			c.push(new TextEncoder().encode(sse));
			expect(c.answer(9)).toBeNull();
		}
		const c = new StreamCollector("completions", "m");
		c.push(new TextEncoder().encode(replayEvents({ ...answer, api: "completions" }, false).join("")));
		expect(c.answer(9)).toEqual({ ...answer, api: "completions", usage: null });
	});
});

describe("coalescing flights", () => {
	it("replays a flight from its first chunk to a late waiter, and counts who is left", async () => {
		const key = `unit-${Math.random()}`;
		const { flight, leader } = board(key);
		expect(leader).toBe(true);
		expect(board(key)).toEqual({ flight, leader: false });
		const early = flight.join(undefined, true);
		flight.setHead({ status: 200, headers: [["content-type", "text/event-stream"]] });
		flight.push(new TextEncoder().encode("a"));
		const first = await early;
		expect(first.head.status).toBe(200);
		flight.push(new TextEncoder().encode("b"));
		const late = await flight.join(undefined, false);
		expect(flight.waiters).toBe(2);
		await late.body.cancel();
		expect(flight.waiters).toBe(1);
		expect(flight.abandoned()).toBe(false);
		flight.push(new TextEncoder().encode("c"));
		land(key, flight);
		flight.end();
		expect(await new Response(first.body).text()).toBe("abc");
		expect(flight.waiters).toBe(0);
		expect(flight.abandoned()).toBe(false);
		expect(board(key).leader).toBe(true);
		land(key, board(key).flight);
	});

	it("is abandoned when every waiter has left before the end", async () => {
		const flight = new Flight();
		const controller = new AbortController();
		const joining = flight.join(controller.signal, false);
		flight.setHead({ status: 200, headers: [] });
		await joining;
		controller.abort();
		expect(flight.abandoned()).toBe(true);
	});
});
