/**
 * Client access fails closed: no keys and no ALLOW_ANONYMOUS means no API;
 * `x-backhaul-route` only for callers allowed to use it; a Worker-side cap on
 * max_tokens. These call the Worker's fetch with their own env (the suite's
 * is anonymous).
 */
import { describe, expect, it } from "vitest";
import { callWorker, chatBody, chatWith, deploy, errorOf, near } from "../client-helpers";
import { uid, upstreamCount } from "../helpers";

/** With an edge model, so the hint is what decides (without one every request is "no-edge-model"); there is no AI binding here. */
const EDGE = { edgeModel: "@cf/meta/llama-3.2-1b-instruct" };
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
const models = (overrides: Record<string, unknown>, headers: Record<string, string> = {}) => callWorker("/v1/models", { headers }, overrides);

describe("without API keys", () => {
	it("refuses chat and models (401 no_api_keys_configured) unless ALLOW_ANONYMOUS is exactly \"true\"", async () => {
		const { model, ids } = await deploy([near("ok")]);
		for (const allow of [undefined, "false", "", "TRUE", "1", "yes", " true"]) {
			const env = { BACKHAUL_API_KEYS: "", ALLOW_ANONYMOUS: allow };
			for (const res of [await chatWith(chatBody(model), env), await models(env)]) {
				expect(res.status, `ALLOW_ANONYMOUS=${allow}`).toBe(401);
				const err = await errorOf(res);
				expect(err).toMatchObject({ type: "authentication_error", code: "no_api_keys_configured" });
				expect(err.message).toContain("BACKHAUL_API_KEYS");
				expect(err.message).toContain("ALLOW_ANONYMOUS");
			}
		}
		// Nothing reached the region.
		expect(await upstreamCount(ids[0]!)).toBe(0);
		// An unset BACKHAUL_API_KEYS is the same as an empty one.
		expect((await models({ BACKHAUL_API_KEYS: undefined, ALLOW_ANONYMOUS: "false" })).status).toBe(401);
		// /health stays open for probes.
		expect((await callWorker("/health", {}, { BACKHAUL_API_KEYS: "", ALLOW_ANONYMOUS: "false" })).status).toBe(200);

		const open = { BACKHAUL_API_KEYS: "", ALLOW_ANONYMOUS: "true" };
		const served = await chatWith(chatBody(model), open);
		expect(served.status).toBe(200);
		await served.body?.cancel();
		expect((await models(open)).status).toBe(200);
	});

	it("does not open a keyed Worker: with keys, ALLOW_ANONYMOUS changes nothing", async () => {
		const key = uid("key-");
		const res = await models({ BACKHAUL_API_KEYS: key, ALLOW_ANONYMOUS: "true" });
		expect(res.status).toBe(401);
		expect((await errorOf(res)).code).toBe("missing_api_key");
		expect((await models({ BACKHAUL_API_KEYS: key, ALLOW_ANONYMOUS: "true" }, bearer(key))).status).toBe(200);
	});
});

describe("BACKHAUL_API_KEYS formats", () => {
	it("accepts a comma-separated list and a JSON array of keys and {key, routeHint}", async () => {
		const [a, b, c] = [uid("ka-"), uid("kb-"), uid("kc-")];
		for (const keys of [` ${a} , ${b},,${c} `, JSON.stringify([a, { key: b }, { key: c, routeHint: true }])]) {
			for (const k of [a, b, c]) expect((await models({ BACKHAUL_API_KEYS: keys }, bearer(k))).status, `${keys} / ${k}`).toBe(200);
			const wrong = await models({ BACKHAUL_API_KEYS: keys }, bearer(uid("nope-")));
			expect(wrong.status).toBe(401);
			expect((await errorOf(wrong)).code).toBe("invalid_api_key");
		}
	});

	it("refuses every request when the JSON form is malformed, never falling open", async () => {
		const key = uid("k-");
		for (const keys of [`[{"key":"${key}"`, `[{"key":"${key}","routehint":true}]`, `[{"key":""}]`, `[{"key":"${key}","routeHint":"yes"}]`, `[42]`]) {
			for (const env of [{ BACKHAUL_API_KEYS: keys }, { BACKHAUL_API_KEYS: keys, ALLOW_ANONYMOUS: "true" }]) {
				const res = await models(env, bearer(key));
				expect(res.status, keys).toBe(500);
				const err = await errorOf(res);
				expect(err.code, keys).toBe("api_keys_misconfigured");
				expect(err.message).not.toContain(key);
			}
		}
	});
});

describe("x-backhaul-route", () => {
	it("is honoured for a key with routeHint, and 403 route_hint_forbidden for a plain key", async () => {
		const [hinter, plain, listed] = [uid("hint-"), uid("plain-"), uid("listed-")];
		const keyed = { BACKHAUL_API_KEYS: JSON.stringify([{ key: hinter, routeHint: true }, { key: plain }, listed]) };
		const commaList = { BACKHAUL_API_KEYS: `${plain},${listed}` };
		const { model, ids } = await deploy([near("ok", EDGE)]);

		const allowed = await chatWith(chatBody(model), keyed, { ...bearer(hinter), "x-backhaul-route": "region" });
		expect(allowed.status).toBe(200);
		expect(allowed.headers.get("x-backhaul-reason")).toBe("client-asked-region");
		await allowed.body?.cancel();
		expect(await upstreamCount(ids[0]!)).toBe(1);

		for (const [env, key] of [
			[keyed, plain],
			[keyed, listed],
			[commaList, plain],
		] as const) {
			for (const hint of ["region", "edge"]) {
				const res = await chatWith(chatBody(model), env, { ...bearer(key), "x-backhaul-route": hint });
				expect(res.status).toBe(403);
				expect(await errorOf(res)).toMatchObject({ type: "permission_error", code: "route_hint_forbidden", param: "x-backhaul-route" });
			}
			// The same key without the header is served.
			const plainRes = await chatWith(chatBody(model), env, bearer(key));
			expect(plainRes.status).toBe(200);
			await plainRes.body?.cancel();
		}
		// Only the allowed request and the three hint-free ones reached the region.
		expect(await upstreamCount(ids[0]!)).toBe(4);
	});

	it("is refused to anonymous callers unless ALLOW_ANONYMOUS_ROUTE_HINT is \"true\"", async () => {
		const { model } = await deploy([near("ok", EDGE)]);
		const anonymous = { BACKHAUL_API_KEYS: "", ALLOW_ANONYMOUS: "true" };
		for (const allowHint of [undefined, "false", "TRUE"]) {
			const res = await chatWith(chatBody(model), { ...anonymous, ALLOW_ANONYMOUS_ROUTE_HINT: allowHint }, { "x-backhaul-route": "region" });
			expect(res.status).toBe(403);
			expect((await errorOf(res)).code).toBe("route_hint_forbidden");
		}
		const res = await chatWith(chatBody(model), { ...anonymous, ALLOW_ANONYMOUS_ROUTE_HINT: "true" }, { "x-backhaul-route": "region" });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-backhaul-reason")).toBe("client-asked-region");
		await res.body?.cancel();
	});
});

describe("MAX_TOKENS_LIMIT", () => {
	it("accepts max_tokens and max_completion_tokens at the cap and refuses one over it (400 naming the param)", async () => {
		const { model, ids } = await deploy([near("ok")]);
		const anonymous = {};
		for (const param of ["max_tokens", "max_completion_tokens"]) {
			const at = await chatWith(chatBody(model, { [param]: 4096 }), anonymous);
			expect(at.status, param).toBe(200);
			await at.body?.cancel();
			const over = await chatWith(chatBody(model, { [param]: 4097 }), anonymous);
			expect(over.status, param).toBe(400);
			const err = await errorOf(over);
			expect(err).toMatchObject({ type: "invalid_request_error", code: "max_tokens_too_large", param });
			expect(err.message).toContain("4096");
		}
		expect(await upstreamCount(ids[0]!)).toBe(2);
	});

	it("follows a configured MAX_TOKENS_LIMIT", async () => {
		const { model } = await deploy([near("ok")]);
		const at = await chatWith(chatBody(model, { max_tokens: 100 }), { MAX_TOKENS_LIMIT: "100" });
		expect(at.status).toBe(200);
		await at.body?.cancel();
		const over = await chatWith(chatBody(model, { max_tokens: 101 }), { MAX_TOKENS_LIMIT: "100" });
		expect(over.status).toBe(400);
		expect((await errorOf(over)).param).toBe("max_tokens");
		// An unreadable value falls back to the default, never to no cap.
		const junk = await chatWith(chatBody(model, { max_tokens: 4097 }), { MAX_TOKENS_LIMIT: "lots" });
		expect(junk.status).toBe(400);
	});
});
