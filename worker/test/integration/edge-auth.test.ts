/**
 * Paths that need an env the suite's Worker does not have (Workers AI has no
 * local mode; API keys are off for the rest of the suite): these call the
 * Worker's fetch handler directly, inside workerd, with that env.
 */
import { describe, expect, it } from "vitest";
import type { AiRunner } from "../../src/edge";
import { callWorker as call, chatWith as chat, upstreamBodies } from "../client-helpers";
import { justExpired, makeRoute, publish, sseContent, ssePayloads, uid, upstream, userMessage } from "../helpers";

const EDGE = "@cf/meta/llama-3.2-1b-instruct";
/** The suite is anonymous; route hints need ALLOW_ANONYMOUS_ROUTE_HINT (client-access.test.ts tests who may send them). */
const HINTS = { ALLOW_ANONYMOUS_ROUTE_HINT: "true" };

/** A Workers AI binding answering as the real one does: `{response}` or an SSE stream of `{"response": ...}` events. */
function aiAnswering(text: string, calls: { model: string; inputs: Record<string, unknown> }[] = []): AiRunner {
	return {
		async run(model, inputs) {
			calls.push({ model, inputs });
			if (!inputs.stream) return { response: text, usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } };
			const enc = new TextEncoder();
			return new ReadableStream({
				start(c) {
					for (const word of text.split(" ")) c.enqueue(enc.encode(`data: ${JSON.stringify({ response: word + " " })}\n\n`));
					c.enqueue(enc.encode("data: [DONE]\n\n"));
					c.close();
				},
			});
		},
	};
}
const aiFailing = (message: string): AiRunner => ({
	run: async () => {
		throw new Error(message);
	},
});

async function edgeModelDeployment() {
	const model = uid("edge-");
	const name = uid("md");
	await publish(makeRoute({ name, region: "r0", model, edgeModel: EDGE, endpoint: upstream("ok", `${name}-r0`), routing: { heavyPromptTokens: 100, heavyMaxTokens: 256 } }));
	return { model, regionId: `${name}-r0` };
}

describe("edge tier (Workers AI)", () => {
	it("answers a light request at the edge with an OpenAI chat.completion", async () => {
		const { model } = await edgeModelDeployment();
		const calls: { model: string; inputs: Record<string, unknown> }[] = [];
		const res = await chat({ model, messages: userMessage("Hi"), max_tokens: 20 }, { AI: aiAnswering("Hello there", calls) });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-backhaul-tier")).toBe("edge");
		expect(res.headers.get("x-backhaul-attempts")).toBe("1");
		expect(await res.json()).toMatchObject({ object: "chat.completion", model, choices: [{ message: { content: "Hello there" } }] });
		expect(calls).toEqual([{ model: EDGE, inputs: { messages: [{ role: "user", content: "Hi" }], stream: false, max_tokens: 20 } }]);
	});

	it("streams edge answers as OpenAI chunks", async () => {
		const { model } = await edgeModelDeployment();
		const res = await chat({ model, messages: userMessage("Hi"), stream: true }, { AI: aiAnswering("one two") });
		const text = await res.text();
		expect(sseContent(text)).toBe("one two ");
		expect(ssePayloads(text).at(-1)).toBe("[DONE]");
	});

	it("sends heavy requests to a region even with an edge model", async () => {
		const { model } = await edgeModelDeployment();
		const calls: { model: string; inputs: Record<string, unknown> }[] = [];
		for (const [body, headers] of [
			[{ model, messages: userMessage("Hi"), max_tokens: 256 }, {}],
			[{ model, messages: userMessage("x".repeat(400)) }, {}],
			[{ model, messages: userMessage("Hi") }, { "x-backhaul-route": "region" }],
		] as const) {
			const res = await chat(body, { AI: aiAnswering("edge", calls), ...HINTS }, headers);
			expect(res.headers.get("x-backhaul-tier")).toBe("region");
			await res.body?.cancel();
		}
		expect(calls).toHaveLength(0);
		const forced = await chat({ model, messages: userMessage("x".repeat(400)) }, { AI: aiAnswering("edge", calls), ...HINTS }, { "x-backhaul-route": "edge" });
		expect(forced.headers.get("x-backhaul-tier")).toBe("edge");
	});

	it("falls back to a region when the AI binding is absent or fails", async () => {
		const { model, regionId } = await edgeModelDeployment();
		const absent = await chat({ model, messages: userMessage("Hi") }, { AI: undefined });
		expect(absent.headers.get("x-backhaul-tier")).toBe("region");
		expect(absent.headers.get("x-backhaul-attempts")).toBe("1");
		expect(((await absent.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content).toBe(`hello from ${regionId}`);

		const failing = await chat({ model, messages: userMessage("Hi"), stream: true }, { AI: aiFailing("3040: Capacity temporarily exceeded") });
		expect(failing.headers.get("x-backhaul-tier")).toBe("region");
		expect(failing.headers.get("x-backhaul-attempts")).toBe("2");
		expect(sseContent(await failing.text())).toBe(`hello from ${regionId} bye`);
	});

	it("falls back to a region when the edge stream breaks before its first chunk", async () => {
		const { model, regionId } = await edgeModelDeployment();
		const broken: AiRunner = {
			run: async () =>
				new ReadableStream({
					pull(c) {
						c.error(new Error("3040: Capacity temporarily exceeded"));
					},
				}),
		};
		const res = await chat({ model, messages: userMessage("Hi"), stream: true }, { AI: broken });
		expect(res.headers.get("x-backhaul-tier")).toBe("region");
		expect(sseContent(await res.text())).toBe(`hello from ${regionId} bye`);
	});

	it("says so when neither the edge nor a region can answer", async () => {
		const model = uid("edge-");
		await publish(makeRoute({ name: uid("md"), model, edgeModel: EDGE, ...justExpired() }));
		const res = await chat({ model, messages: userMessage("Hi") }, { AI: aiFailing("boom") });
		expect(res.status).toBe(503);
		const err = ((await res.json()) as { error: { message: string } }).error;
		expect(err.message).toContain("No live region");
		expect(err.message).toContain("boom");
	});

	it("sends a request with a field the edge would drop to a region, field intact, whatever x-backhaul-route says", async () => {
		const { model, regionId } = await edgeModelDeployment();
		const calls: { model: string; inputs: Record<string, unknown> }[] = [];
		const tool = { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } };
		const cases: [Record<string, unknown>, string][] = [
			[{ tools: [tool] }, "tools"],
			[{ tools: [tool], tool_choice: "none" }, "tools"],
			[{ tool_choice: { type: "function", function: { name: "get_weather" } } }, "tool_choice"],
			[{ response_format: { type: "json_object" } }, "response_format"],
			[{ response_format: { type: "json_schema", json_schema: { name: "w", schema: { type: "object" }, strict: true } } }, "response_format"],
			[{ stop: ["\n"] }, "stop"],
			[{ stop: "END" }, "stop"],
			[{ min_p: 0.1 }, "min_p"],
			[{ n: 2 }, "n"],
			[{ logprobs: true }, "logprobs"],
			[{ top_logprobs: 2 }, "top_logprobs"],
		];
		for (const [extra, field] of cases) {
			for (const headers of [{}, { "x-backhaul-route": "edge" }] as Record<string, string>[]) {
				const res = await chat({ model, messages: userMessage("Hi"), ...extra }, { AI: aiAnswering("edge", calls), ...HINTS }, headers);
				expect(res.headers.get("x-backhaul-tier"), field).toBe("region");
				expect(res.headers.get("x-backhaul-reason"), field).toBe("edge-unsupported");
				await res.body?.cancel();
			}
		}
		// A conversation that carries tool calls and results: the edge would pass their text only.
		const toolTurns = [
			{ role: "user", content: "Weather in Paris?" },
			{ role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }] },
			{ role: "tool", tool_call_id: "call_1", content: "18 C" },
		];
		const history = await chat({ model, messages: toolTurns }, { AI: aiAnswering("edge", calls) });
		expect(history.headers.get("x-backhaul-tier")).toBe("region");
		await history.body?.cancel();
		expect(calls).toHaveLength(0);
		// The region got each body as the client sent it: nothing dropped or rewritten.
		const bodies = await upstreamBodies(regionId);
		expect(bodies).toHaveLength(cases.length * 2 + 1);
		expect(bodies[0]).toMatchObject({ tools: [tool] });
		expect(bodies[8]).toMatchObject({ response_format: { type: "json_schema", json_schema: { name: "w", strict: true } } });
		expect(bodies.at(-1)).toMatchObject({ messages: toolTurns });
	});

	it("keeps a request at the edge when such fields hold values that change nothing", async () => {
		const { model } = await edgeModelDeployment();
		const calls: { model: string; inputs: Record<string, unknown> }[] = [];
		for (const extra of [
			{ tools: [] },
			{ tool_choice: "none" },
			{ tool_choice: "auto", parallel_tool_calls: true },
			{ response_format: { type: "text" } },
			{ stop: null, n: 1, logprobs: false, top_logprobs: null },
			{ stop: [] },
			{ user: "u-1", metadata: { a: "b" }, store: false },
		]) {
			const res = await chat({ model, messages: userMessage("Hi"), ...extra }, { AI: aiAnswering("edge", calls) });
			expect(res.headers.get("x-backhaul-tier"), JSON.stringify(extra)).toBe("edge");
			expect(res.headers.get("x-backhaul-reason")).toBe("light");
			await res.body?.cancel();
		}
		expect(calls).toHaveLength(7);
	});

	it("sends a legacy completion with echo, suffix or stop to a region", async () => {
		const { model, regionId } = await edgeModelDeployment();
		const calls: { model: string; inputs: Record<string, unknown> }[] = [];
		for (const extra of [{ echo: true }, { suffix: "end" }, { stop: ["."] }]) {
			const res = await call("/v1/completions", { method: "POST", body: JSON.stringify({ model, prompt: "Once", ...extra }) }, { AI: aiAnswering("edge", calls) });
			expect(res.headers.get("x-backhaul-tier")).toBe("region");
			expect(res.headers.get("x-backhaul-reason")).toBe("edge-unsupported");
			await res.body?.cancel();
		}
		expect(calls).toHaveLength(0);
		expect((await upstreamBodies(regionId)).map((b) => Object.keys(b).at(-1))).toEqual(["echo", "suffix", "stop"]);
	});

	it("refuses such a field (400 naming it) for a model only the edge serves", async () => {
		const { model } = await edgeModelDeployment();
		await (await chat({ model, messages: userMessage("Hi") }, { AI: aiAnswering("edge") })).body?.cancel();
		const calls: { model: string; inputs: Record<string, unknown> }[] = [];
		const res = await chat({ model: EDGE, messages: userMessage("Hi"), response_format: { type: "json_object" } }, { AI: aiAnswering("edge", calls) });
		expect(res.status).toBe(400);
		expect(await res.json()).toMatchObject({ error: { type: "invalid_request_error", code: "unsupported_parameter", param: "response_format" } });
		expect(calls).toHaveLength(0);
		// Without it, the edge model answers.
		const plain = await chat({ model: EDGE, messages: userMessage("Hi") }, { AI: aiAnswering("edge", calls) });
		expect(plain.headers.get("x-backhaul-tier")).toBe("edge");
		await plain.body?.cancel();
	});

	it("lists the edge model and models that only the edge can serve now", async () => {
		const model = uid("edge-");
		await publish(makeRoute({ name: uid("md"), model, edgeModel: EDGE, ...justExpired() }));
		const list = (await (await call("/v1/models", {}, {})).json()) as { data: { id: string; owned_by: string }[] };
		expect(list.data).toContainEqual(expect.objectContaining({ id: model }));
		expect(list.data).toContainEqual(expect.objectContaining({ id: EDGE, owned_by: "backhaul-edge" }));
	});
});

describe("x-backhaul-client-location", () => {
	it("replaces the request's location only where TRUST_LOCATION_HEADER is true", async () => {
		const model = uid("loc-");
		const name = uid("md");
		await publish(makeRoute({ name, region: "tokyo", model, endpoint: upstream("ok", `${name}-tokyo`), location: { latitude: 35.68, longitude: 139.69 } }));
		await publish(makeRoute({ name, region: "paris", model, endpoint: upstream("ok", `${name}-paris`), location: { latitude: 48.86, longitude: 2.35 } }));
		const ask = async (trust: string) => {
			const res = await chat({ model, messages: userMessage("Hi") }, { TRUST_LOCATION_HEADER: trust, DEFAULT_LOCATION: "48.8,2.3" }, { "x-backhaul-client-location": "35.6,139.7" });
			await res.body?.cancel();
			return res.headers.get("x-backhaul-region");
		};
		expect(await ask("true")).toBe("tokyo");
		expect(await ask("false")).toBe("paris");
	});
});

describe("API keys and rate limits", () => {
	const keys = { BACKHAUL_API_KEYS: "key-one, key-two" };

	it("401s a missing or wrong key and accepts every configured key", async () => {
		const missing = await call("/v1/models", {}, keys);
		expect(missing.status).toBe(401);
		expect(await missing.json()).toMatchObject({ error: { type: "authentication_error", code: "missing_api_key" } });
		const wrong = await call("/v1/models", { headers: { authorization: "Bearer key-three" } }, keys);
		expect(wrong.status).toBe(401);
		expect(await wrong.json()).toMatchObject({ error: { code: "invalid_api_key" } });
		const post = await chat({ model: "x", messages: userMessage("hi") }, keys);
		expect(post.status).toBe(401);
		for (const key of ["key-one", "key-two"]) {
			expect((await call("/v1/models", { headers: { authorization: `Bearer ${key}` } }, keys)).status).toBe(200);
		}
		// /health stays open for load balancers and probes.
		expect((await call("/health", {}, keys)).status).toBe(200);
	});

	it("429s a key over its rate limit with Retry-After, without touching other keys", async () => {
		// The limiter's windows are aligned to the wall clock (as Cloudflare's are), so a
		// run that straddles a minute boundary sees its count reset part-way. Such a run
		// proves nothing either way; it is repeated once in the fresh window it crossed into.
		const window = () => Math.floor(Date.now() / 60_000);
		for (let attempt = 0; ; attempt++) {
			const key = uid("rl-key-");
			const own = { BACKHAUL_API_KEYS: `${key},other-key` };
			const started = window();
			const statuses: number[] = [];
			for (let i = 0; i < 121; i++) {
				const res = await call("/v1/models", { headers: { authorization: `Bearer ${key}` } }, own);
				statuses.push(res.status);
				await res.body?.cancel();
			}
			const limited = await call("/v1/models", { headers: { authorization: `Bearer ${key}` } }, own);
			if (window() !== started && attempt === 0) {
				await limited.body?.cancel();
				continue;
			}
			expect(statuses.slice(0, 120).every((s) => s === 200)).toBe(true);
			expect(statuses[120]).toBe(429);
			expect(limited.status).toBe(429);
			expect(limited.headers.get("retry-after")).toBe("60");
			expect(await limited.json()).toMatchObject({ error: { type: "rate_limit_error" } });
			expect((await call("/v1/models", { headers: { authorization: "Bearer other-key" } }, own)).status).toBe(200);
			return;
		}
	});
});
