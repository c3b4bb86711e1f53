import { describe, expect, it } from "vitest";
import { chat, justExpired, makeRoute, publish, routePath, signedRequest, sseContent, ssePayloads, testEnv, uid, upstream, upstreamControl, upstreamCount, userMessage } from "../helpers";
import { deploy, errorOf, LONDON } from "../client-helpers";

const body = (model: string, extra = {}) => ({ model, messages: userMessage("Hello"), ...extra });

describe("routing to regions", () => {
	it("sends a heavy request to the nearest live region and says so in headers", async () => {
		const { model, ids } = await deploy([
			{ scenario: "ok", latitude: 39.04, longitude: -77.49 }, // us-east
			{ scenario: "ok", latitude: 53.35, longitude: -6.26 }, // eu-west
		]);
		const res = await chat(body(model), { cf: LONDON });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-backhaul-tier")).toBe("region");
		expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
		expect(res.headers.get("x-backhaul-attempts")).toBe("1");
		const completion = (await res.json()) as { choices: { message: { content: string } }[] };
		expect(completion.choices[0]!.message.content).toBe(`hello from ${ids[1]}`);

		const sf = await chat(body(model), { cf: { latitude: "37.77", longitude: "-122.42" } });
		expect(sf.headers.get("x-backhaul-region")).toBe("r0-ok");
		await sf.body?.cancel();
	});

	it("streams SSE through unchanged and ends it with [DONE]", async () => {
		const { model, ids } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const res = await chat(body(model, { stream: true }));
		expect(res.headers.get("content-type")).toContain("text/event-stream");
		const text = await res.text();
		expect(sseContent(text)).toBe(`hello from ${ids[0]} bye`);
		expect(ssePayloads(text).at(-1)).toBe("[DONE]");
	});

	it("sends the first chunk before the region has finished (no buffering)", async () => {
		const { model, ids } = await deploy([{ scenario: "gated", latitude: 0, longitude: 0 }]);
		const res = await chat(body(model, { stream: true }));
		const reader = res.body!.getReader();
		const first = new TextDecoder().decode((await reader.read()).value);
		// The region is still holding the rest of its answer at this point.
		expect(sseContent(first)).toBe(`hello from ${ids[0]}`);
		await upstreamControl("release", ids[0]!);
		let rest = "";
		for (;;) {
			const { done, value } = await reader.read();
			if (done) break;
			rest += new TextDecoder().decode(value);
		}
		expect(sseContent(rest)).toBe(" bye");
		expect(ssePayloads(rest).at(-1)).toBe("[DONE]");
	});

	it("fails over from a refused connection to the next region", async () => {
		const model = uid("model-");
		const name = uid("md");
		await publish(makeRoute({ name, region: "near", model, endpoint: testEnv.TEST_REFUSED, location: { latitude: 51, longitude: 0 } }));
		await publish(makeRoute({ name, region: "far", model, endpoint: upstream("ok", `${name}-far`), location: { latitude: 0, longitude: 100 } }));
		const res = await chat(body(model), { cf: LONDON });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-backhaul-region")).toBe("far");
		expect(res.headers.get("x-backhaul-attempts")).toBe("2");
		await res.body?.cancel();
	});

	it("fails over on 503 without cooling the region down", async () => {
		const { model, ids } = await deploy([
			{ scenario: "status503", latitude: 51, longitude: 0 },
			{ scenario: "ok", latitude: 0, longitude: 100 },
		]);
		for (let i = 0; i < 2; i++) {
			const res = await chat(body(model), { cf: LONDON });
			expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
			expect(res.headers.get("x-backhaul-attempts")).toBe("2");
			await res.body?.cancel();
		}
		expect(await upstreamCount(ids[0]!)).toBe(2);
	});

	it("fails over on 429 and keeps the saturated region out for its Retry-After", async () => {
		const { model, ids } = await deploy([
			{ scenario: "status429", latitude: 51, longitude: 0 },
			{ scenario: "ok", latitude: 0, longitude: 100 },
		]);
		const first = await chat(body(model), { cf: LONDON });
		expect(first.headers.get("x-backhaul-region")).toBe("r1-ok");
		expect(first.headers.get("x-backhaul-attempts")).toBe("2");
		await first.body?.cancel();
		const second = await chat(body(model), { cf: LONDON });
		expect(second.headers.get("x-backhaul-region")).toBe("r1-ok");
		expect(second.headers.get("x-backhaul-attempts")).toBe("1");
		await second.body?.cancel();
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("answers 429 with Retry-After when every region is saturated", async () => {
		const { model, ids } = await deploy([{ scenario: "status429", latitude: 51, longitude: 0 }]);
		const res = await chat(body(model));
		expect(res.status).toBe(429);
		expect(res.headers.get("retry-after")).toBe("30");
		expect((await errorOf(res)).type).toBe("rate_limit_error");
		// The region is cooling down now: the client is told when to come back, and the region is left alone.
		const next = await chat(body(model));
		expect(next.status).toBe(429);
		expect(Number(next.headers.get("retry-after"))).toBeGreaterThanOrEqual(29);
		expect(next.headers.get("x-backhaul-attempts")).toBe("0");
		expect(await upstreamCount(ids[0]!)).toBe(1);
	});

	it("fails over when the first byte is late", async () => {
		const { model } = await deploy(
			[
				{ scenario: "slow", latitude: 51, longitude: 0 },
				{ scenario: "ok", latitude: 0, longitude: 100 },
			],
			{ firstByteTimeoutMs: 1000 }, // the lowest a route may say
		);
		const started = Date.now();
		const res = await chat(body(model, { stream: true }), { cf: LONDON });
		expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
		expect(Date.now() - started).toBeLessThan(2500);
		await res.body?.cancel();
	});

	it("fails over when a region sends 200 headers and breaks before its first chunk", async () => {
		const { model } = await deploy([
			{ scenario: "emptystream", latitude: 51, longitude: 0 },
			{ scenario: "ok", latitude: 0, longitude: 100 },
		]);
		const res = await chat(body(model, { stream: true }), { cf: LONDON });
		expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
		expect(res.headers.get("x-backhaul-attempts")).toBe("2");
		expect(ssePayloads(await res.text()).at(-1)).toBe("[DONE]");
	});

	it("fails over when a region's stream opens with an error event", async () => {
		const { model } = await deploy([
			{ scenario: "errorfirst", latitude: 51, longitude: 0 },
			{ scenario: "ok", latitude: 0, longitude: 100 },
		]);
		const res = await chat(body(model, { stream: true }), { cf: LONDON });
		expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
		expect(res.headers.get("x-backhaul-attempts")).toBe("2");
		await res.body?.cancel();
	});

	it("passes a region's own mid-stream error event through once", async () => {
		const { model } = await deploy([{ scenario: "errorlater", latitude: 0, longitude: 0 }]);
		const payloads = ssePayloads(await (await chat(body(model, { stream: true }))).text());
		const errors = payloads.filter((p) => p.startsWith('{"error"'));
		expect(errors).toHaveLength(1);
		expect(JSON.parse(errors[0]!)).toMatchObject({ error: { code: "deadline_exceeded" } });
	});

	it("stops after failoverAttempts regions", async () => {
		const { model } = await deploy(
			[
				{ scenario: "status503", latitude: 51, longitude: 0 },
				{ scenario: "status503", latitude: 52, longitude: 0 },
				{ scenario: "ok", latitude: 0, longitude: 100 },
			],
			{ failoverAttempts: 2 },
		);
		const res = await chat(body(model), { cf: LONDON });
		expect(res.status).toBe(503);
		expect(res.headers.get("x-backhaul-attempts")).toBe("2");
		expect((await errorOf(res)).code).toBe("regions_failed");
	});

	it("passes a region's 4xx to the client without failing over", async () => {
		const { model } = await deploy([
			{ scenario: "badrequest", latitude: 51, longitude: 0 },
			{ scenario: "ok", latitude: 0, longitude: 100 },
		]);
		const res = await chat(body(model), { cf: LONDON });
		expect(res.status).toBe(400);
		expect(res.headers.get("x-backhaul-attempts")).toBe("1");
		expect((await errorOf(res)).message).toBe("upstream says no");
	});

	it("ends a stream whose region fails mid-way with an error event, never silently", async () => {
		for (const scenario of ["midfail", "truncated"]) {
			const { model, ids } = await deploy([{ scenario, latitude: 0, longitude: 0 }, { scenario: "ok", latitude: 10, longitude: 10 }]);
			const res = await chat(body(model, { stream: true }), { cf: { latitude: "0", longitude: "0" } });
			expect(res.status, scenario).toBe(200);
			const payloads = ssePayloads(await res.text());
			expect(payloads[0], scenario).toContain(`hello from ${ids[0]}`);
			expect(payloads.at(-1), scenario).toBe("[DONE]");
			expect(JSON.parse(payloads.at(-2)!), scenario).toMatchObject({ error: { type: "server_error", code: expect.stringMatching(/^upstream_stream_/) } });
		}
	});

	it("cancels the upstream request when the client goes away mid-stream", async () => {
		const { model, ids } = await deploy([{ scenario: "hold", latitude: 0, longitude: 0 }]);
		const res = await chat(body(model, { stream: true }));
		const reader = res.body!.getReader();
		await reader.read();
		await reader.cancel();
		const closed = await upstreamControl("closed", ids[0]!);
		expect(await closed.text()).toBe("closed");
	});

	it("stops routing to a region once its route expires or is withdrawn", async () => {
		const { model, name } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0, extra: { ...justExpired() } }]);
		const expired = await chat(body(model));
		expect(expired.status).toBe(503);
		expect((await errorOf(expired)).message).toContain(`No live region serves '${model}'`);

		const route = makeRoute({ name, region: "fresh", model, endpoint: upstream("ok", `${name}-fresh`) });
		await publish(route);
		expect((await chat(body(model))).status).toBe(200);
		await signedRequest("DELETE", routePath(route));
		expect((await chat(body(model))).status).toBe(503);
	});
});

describe("client input", () => {
	it("rejects malformed JSON, missing messages and bad fields with 400", async () => {
		const bad = await chat("{nope");
		expect(bad.status).toBe(400);
		expect(await errorOf(bad)).toMatchObject({ type: "invalid_request_error", code: "invalid_json" });
		const missing = await chat({ model: "x" });
		expect(missing.status).toBe(400);
		expect((await errorOf(missing)).param).toBe("messages");
		const maxTokens = await chat({ model: "x", messages: userMessage("hi"), max_tokens: -3 });
		expect((await errorOf(maxTokens)).param).toBe("max_tokens");
		const hint = await chat({ model: "x", messages: userMessage("hi") }, { headers: { "x-backhaul-route": "gpu" } });
		expect(hint.status).toBe(400);
	});

	it("rejects an unknown model with 404", async () => {
		const res = await chat({ model: uid("nope-"), messages: userMessage("hi") });
		expect(res.status).toBe(404);
		expect(await errorOf(res)).toMatchObject({ code: "model_not_found", param: "model" });
	});

	it("rejects bodies over MAX_BODY_BYTES with 413", async () => {
		const res = await chat({ model: "x", messages: userMessage("x".repeat(Number(testEnv.MAX_BODY_BYTES))) });
		expect(res.status).toBe(413);
		expect((await errorOf(res)).code).toBe("request_too_large");
	});

	it("answers /health, lists live models, and 404s unknown paths", async () => {
		const { SELF } = await import("cloudflare:test");
		expect(await (await SELF.fetch("https://router.test/health")).json()).toEqual({ status: "ok" });
		const { model } = await deploy([{ scenario: "ok", latitude: 0, longitude: 0 }]);
		const expiredModel = (await deploy([{ scenario: "ok", latitude: 0, longitude: 0, extra: { ...justExpired() } }])).model;
		const list = (await (await SELF.fetch("https://router.test/v1/models")).json()) as { object: string; data: { id: string }[] };
		expect(list.object).toBe("list");
		expect(list.data.map((m) => m.id)).toContain(model);
		expect(list.data.map((m) => m.id)).not.toContain(expiredModel);
		const missing = await SELF.fetch("https://router.test/v2/nothing");
		expect(missing.status).toBe(404);
		expect((await errorOf(missing)).type).toBe("not_found_error");
	});
});
