/**
 * The response cache and request coalescing (issue 18) through the Worker's
 * fetch: what reaches the simulated region is counted there
 * (test/upstream-server.ts, /control/count/{id}).
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import type { AccessRecord } from "../../src/access-log";
import { chat, completion, sseContent, ssePayloads, upstreamControl, upstreamCount } from "../helpers";
import { chatBody, chatWith, deploy } from "../client-helpers";

const GREEDY = { temperature: 0 };
/** The client opts in for a minute (CACHE_TTL_SECONDS is 0 in the suite). */
const OPT_IN = { "x-backhaul-cache-ttl": "60" };
const cacheOf = (res: Response) => res.headers.get("x-backhaul-cache");
const contentOf = async (res: Response) => ((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
type Chunk = { object: string; choices: { index: number; delta?: Record<string, unknown>; finish_reason: string | null }[] };
const chunksOf = (text: string) => ssePayloads(text).filter((p) => p !== "[DONE]").map((p) => JSON.parse(p) as Chunk);

/** Reads a body to its end. */
async function readAll(res: Response): Promise<string> {
	return await res.text();
}

/** The first chunk of a streamed body, and its reader for the rest. */
async function firstChunk(res: Response) {
	const reader = res.body!.getReader();
	const first = new TextDecoder().decode((await reader.read()).value);
	return { reader, first };
}

async function rest(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<string> {
	let text = "";
	for (;;) {
		const { done, value } = await reader.read();
		if (done) return text;
		text += new TextDecoder().decode(value);
	}
}

afterEach(() => vi.restoreAllMocks());

describe("response cache", () => {
	it("says in the access log line whether the cache answered", async () => {
		const { model } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const spy = vi.spyOn(console, "log").mockImplementation(() => {});
		const send = async (extra: Record<string, unknown>, headers: Record<string, string>) => (await chatWith(chatBody(model, extra), {}, headers)).text();
		await send(GREEDY, OPT_IN);
		await send(GREEDY, OPT_IN);
		await send(GREEDY, { ...OPT_IN, "x-backhaul-skip-cache": "true" });
		await send({ temperature: 1 }, {});
		const records = spy.mock.calls
			.map((c) => String(c[0]))
			.filter((l) => l.startsWith("{"))
			.map((l) => JSON.parse(l) as AccessRecord)
			.filter((r) => r.event === "access" && r.model === model);
		expect(records.map((r) => [r.cache, r.coalesced])).toEqual([
			["miss", false],
			["hit", false],
			["bypass", false],
			["none", false],
		]);
		expect(records[1]!.usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
		expect(records[1]!.attempts).toEqual([]);
	});

	it("answers a repeated non-streamed request from the cache: MISS, then HIT without reaching the region", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const first = await chat(chatBody(model, GREEDY), { headers: OPT_IN });
		expect(first.status).toBe(200);
		expect(cacheOf(first)).toBe("MISS");
		const firstBody = (await first.json()) as Record<string, unknown>;
		const second = await chat(chatBody(model, GREEDY), { headers: OPT_IN });
		expect(second.status).toBe(200);
		expect(cacheOf(second)).toBe("HIT");
		expect(second.headers.get("x-backhaul-attempts")).toBe("0");
		expect(second.headers.get("x-request-id")).toBeTruthy();
		expect(await second.json()).toEqual(firstBody);
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("stores a streamed answer and replays it, streamed with the same chunk shapes and non-streamed", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const first = await chat(chatBody(model, { ...GREEDY, stream: true }), { headers: OPT_IN });
		expect(cacheOf(first)).toBe("MISS");
		const live = await readAll(first);
		const replayed = await chat(chatBody(model, { ...GREEDY, stream: true }), { headers: OPT_IN });
		expect(cacheOf(replayed)).toBe("HIT");
		expect(replayed.headers.get("content-type")).toContain("text/event-stream");
		const again = await readAll(replayed);
		expect(sseContent(again)).toBe(sseContent(live));
		expect(sseContent(again)).toBe(`hello from ${ids[0]} bye`);
		expect(ssePayloads(again).at(-1)).toBe("[DONE]");
		// The same chunk shapes as the region's: chat.completion.chunk, one choice with a delta.
		for (const chunk of [...chunksOf(live), ...chunksOf(again)]) {
			expect(chunk.object).toBe("chat.completion.chunk");
			expect(chunk.choices).toHaveLength(1);
			expect(chunk.choices[0]!.index).toBe(0);
			expect(typeof chunk.choices[0]!.delta).toBe("object");
		}
		expect(chunksOf(again).at(-1)!.choices[0]!.finish_reason).toBe("stop");
		const whole = await chat(chatBody(model, GREEDY), { headers: OPT_IN });
		expect(cacheOf(whole)).toBe("HIT");
		expect(await contentOf(whole)).toBe(`hello from ${ids[0]} bye`);
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("replays a non-streamed answer as a stream, with a usage chunk when asked", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		await (await chat(chatBody(model, GREEDY), { headers: OPT_IN })).text();
		const res = await chat(chatBody(model, { ...GREEDY, stream: true, stream_options: { include_usage: true } }), { headers: OPT_IN });
		expect(cacheOf(res)).toBe("HIT");
		const text = await res.text();
		expect(sseContent(text)).toBe(`hello from ${ids[0]}`);
		const chunks = chunksOf(text);
		expect(chunks[0]!.choices[0]!.delta).toEqual({ role: "assistant", content: "" });
		expect((chunks.at(-1) as unknown as { usage: unknown }).usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("caches legacy completions as text_completion", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const body = { model, prompt: "Once", ...GREEDY };
		expect(cacheOf(await completion(body, { headers: OPT_IN }))).toBe("MISS");
		const hit = await completion(body, { headers: OPT_IN });
		expect(cacheOf(hit)).toBe("HIT");
		const json = (await hit.json()) as { object: string; choices: { text: string }[] };
		expect(json.object).toBe("text_completion");
		expect(json.choices[0]!.text).toBe(`hello from ${ids[0]}`);
		// A chat request with the same text is another entry.
		expect(cacheOf(await chat(chatBody(model, GREEDY), { headers: OPT_IN }))).toBe("MISS");
		expect(await upstreamCount(ids[0]!)).toBe(2);
	});

	it("bypasses the cache on x-backhaul-skip-cache: true", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		await (await chat(chatBody(model, GREEDY), { headers: OPT_IN })).text();
		const res = await chat(chatBody(model, GREEDY), { headers: { ...OPT_IN, "x-backhaul-skip-cache": "true" } });
		expect(res.status).toBe(200);
		expect(cacheOf(res)).toBe("BYPASS");
		await res.text();
		expect(await upstreamCount(ids[0]!)).toBe(2);
	});

	it("does not cache sampled requests (temperature above 0, no opt-in), nor a greedy one without a TTL", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		for (let i = 0; i < 2; i++) {
			const res = await chat(chatBody(model, { temperature: 0.7 }));
			expect(cacheOf(res)).toBeNull();
			await res.text();
		}
		// CACHE_TTL_SECONDS is 0 and the model has no CACHE_MODELS entry.
		const res = await chat(chatBody(model, GREEDY));
		expect(cacheOf(res)).toBeNull();
		await res.text();
		expect(await upstreamCount(ids[0]!)).toBe(3);
		const bad = await chat(chatBody(model, GREEDY), { headers: { "x-backhaul-cache-ttl": "soon" } });
		expect(bad.status).toBe(400);
		await bad.text();
	});

	it("keeps each API key's entries apart unless CACHE_MODELS shares the model's", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const keys = { BACKHAUL_API_KEYS: "cache-key-a,cache-key-b", ALLOW_ANONYMOUS: "false", CACHE_MODELS: JSON.stringify({ [model]: { ttlSeconds: 60 } }) };
		const as = (key: string, env = keys) => chatWith(chatBody(model, GREEDY), env, { authorization: `Bearer ${key}` });
		const a1 = await as("cache-key-a");
		expect(cacheOf(a1)).toBe("MISS");
		await a1.text();
		const a2 = await as("cache-key-a");
		expect(cacheOf(a2)).toBe("HIT");
		await a2.text();
		const b1 = await as("cache-key-b");
		expect(cacheOf(b1)).toBe("MISS");
		await b1.text();
		expect(await upstreamCount(ids[0]!)).toBe(2);

		const shared = { ...keys, CACHE_MODELS: JSON.stringify({ [model]: { ttlSeconds: 60, shared: true } }) };
		const s1 = await as("cache-key-a", shared);
		expect(cacheOf(s1)).toBe("MISS");
		await s1.text();
		const s2 = await as("cache-key-b", shared);
		expect(cacheOf(s2)).toBe("HIT");
		await s2.text();
		expect(await upstreamCount(ids[0]!)).toBe(3);
	});

	it("expires an entry after its TTL", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const ttl = { "x-backhaul-cache-ttl": "1" };
		expect(cacheOf(await chat(chatBody(model, GREEDY), { headers: ttl }))).toBe("MISS");
		const hit = await chat(chatBody(model, GREEDY), { headers: ttl });
		expect(cacheOf(hit)).toBe("HIT");
		await hit.text();
		const deadline = Date.now() + 10_000;
		let status: string | null = "HIT";
		while (status === "HIT") {
			if (Date.now() > deadline) throw new Error("the 1 s entry was still served after 10 s");
			await new Promise((r) => setTimeout(r, 100)); // poll interval
			const res = await chat(chatBody(model, GREEDY), { headers: ttl });
			status = cacheOf(res);
			await res.text();
		}
		expect(status).toBe("MISS");
		expect(await upstreamCount(ids[0]!)).toBe(2);
	});

	it("never stores an error", async () => {
		const { model, ids } = await deploy([{ scenario: "badrequest", latitude: 0, longitude: 0 }]);
		for (let i = 0; i < 2; i++) {
			const res = await chat(chatBody(model, GREEDY), { headers: OPT_IN });
			expect(res.status).toBe(400);
			expect(cacheOf(res)).toBe("MISS");
			await res.text();
		}
		expect(await upstreamCount(ids[0]!)).toBe(2);
	});

	for (const scenario of ["midfail", "truncated", "errorlater"]) {
		it(`never stores a stream that did not end with [DONE] cleanly (${scenario})`, async () => {
			const { model, ids } = await deploy([{ scenario, latitude: 0, longitude: 0 }]);
			for (let i = 0; i < 2; i++) {
				const res = await chat(chatBody(model, { ...GREEDY, stream: true }), { headers: OPT_IN });
				expect(cacheOf(res)).toBe("MISS");
				expect(await res.text()).toContain('"error"');
			}
			expect(await upstreamCount(ids[0]!)).toBe(2);
		});
	}
});

describe("request coalescing", () => {
	it("sends N identical concurrent streamed requests upstream once, each getting the whole stream", async () => {
		const { model, ids } = await deploy([{ scenario: "gated", latitude: 0, longitude: 0 }]);
		const N = 5;
		const responses = await Promise.all(Array.from({ length: N }, () => chat(chatBody(model, { ...GREEDY, stream: true }), { headers: OPT_IN })));
		await upstreamControl("release", ids[0]!);
		const texts = await Promise.all(responses.map((r) => r.text()));
		for (const text of texts) {
			expect(sseContent(text)).toBe(`hello from ${ids[0]} bye`);
			expect(ssePayloads(text).at(-1)).toBe("[DONE]");
		}
		expect(responses.map(cacheOf)).toEqual(Array(N).fill("MISS"));
		expect(await upstreamCount(ids[0]!)).toBe(1);
		// Stored once: the next one is a hit.
		expect(cacheOf(await chat(chatBody(model, GREEDY), { headers: OPT_IN }))).toBe("HIT");
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("sends N identical concurrent non-streamed requests upstream once", async () => {
		const { model, ids } = await deploy([{ scenario: "slow", latitude: 0, longitude: 0 }], { firstByteTimeoutMs: 8_000, requestTimeoutMs: 10_000 });
		const N = 4;
		const responses = await Promise.all(Array.from({ length: N }, () => chat(chatBody(model, GREEDY), { headers: OPT_IN })));
		for (const res of responses) {
			expect(res.status).toBe(200);
			expect(await contentOf(res)).toBe(`hello from ${ids[0]}`);
		}
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("keeps serving the others when waiters disconnect, the leader included", async () => {
		const { model, ids } = await deploy([{ scenario: "gated", latitude: 0, longitude: 0 }]);
		const [a, b, c] = await Promise.all([0, 1, 2].map(() => chat(chatBody(model, { ...GREEDY, stream: true }), { headers: OPT_IN })));
		const firsts = await Promise.all([a!, b!, c!].map(firstChunk));
		for (const f of firsts) expect(sseContent(f.first)).toBe(`hello from ${ids[0]}`);
		// The first request (the flight's leader) and another go away.
		await firsts[0]!.reader.cancel();
		await firsts[1]!.reader.cancel();
		await upstreamControl("release", ids[0]!);
		const tail = await rest(firsts[2]!.reader);
		expect(sseContent(firsts[2]!.first + tail)).toBe(`hello from ${ids[0]} bye`);
		expect(ssePayloads(tail).at(-1)).toBe("[DONE]");
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("cancels the upstream once the last waiter has left", async () => {
		const { model, ids } = await deploy([{ scenario: "hold", latitude: 0, longitude: 0 }]);
		const responses = await Promise.all([0, 1].map(() => chat(chatBody(model, { ...GREEDY, stream: true }), { headers: OPT_IN })));
		const firsts = await Promise.all(responses.map(firstChunk));
		await firsts[0]!.reader.cancel();
		await firsts[1]!.reader.cancel();
		const closed = await upstreamControl("closed", ids[0]!);
		expect(closed.status).toBe(200);
		await closed.text();
		expect(await upstreamCount(ids[0]!)).toBe(1);
		// Nothing was stored: the next request goes to the region again.
		const again = await chat(chatBody(model, GREEDY), { headers: OPT_IN });
		expect(cacheOf(again)).toBe("MISS");
		await again.text();
	});
});
