/**
 * Workers Analytics Engine (issue 18): one data point per /v1 request,
 * built from the access log's record, through the Worker's fetch with a
 * recording dataset in its env; unbound, or failing, it changes nothing.
 */
import { env } from "cloudflare:test";
import { afterEach, describe, expect, it, vi } from "vitest";
import { BLOB_NAMES, DOUBLE_NAMES } from "../../src/analytics";
import type { AiRunner } from "../../src/edge";
import { callWorker, chatBody, chatWith, deploy, far, LONDON, near } from "../client-helpers";
import { makeRoute, publish, uid, upstream } from "../helpers";

/** A dataset binding that keeps what is written. */
function recorder() {
	const points: AnalyticsEngineDataPoint[] = [];
	return { points, dataset: { writeDataPoint: (p?: AnalyticsEngineDataPoint) => void points.push(p!) } satisfies AnalyticsEngineDataset };
}

/** A data point with its columns named (BLOB_NAMES, DOUBLE_NAMES). */
const named = (p: AnalyticsEngineDataPoint): Record<string, unknown> => ({
	index: p.indexes![0],
	...Object.fromEntries(BLOB_NAMES.map((n, i) => [n, p.blobs![i]])),
	...Object.fromEntries(DOUBLE_NAMES.map((n, i) => [n, p.doubles![i]])),
});

/** Waits for `n` data points (a relayed stream's is written once it ends, in waitUntil). */
async function points(rec: ReturnType<typeof recorder>, n: number) {
	for (let i = 0; i < 100 && rec.points.length < n; i++) await new Promise((r) => setTimeout(r, 10));
	return rec.points.map(named);
}

afterEach(() => vi.restoreAllMocks());

describe("Analytics Engine data points", () => {
	it("are written to the suite's own local dataset without effect (wrangler.jsonc's env.local binds it)", () => {
		expect(typeof (env as Env).ANALYTICS?.writeDataPoint).toBe("function");
	});

	it("record a cache miss and then a hit, one point each", async () => {
		const { model } = await deploy([near("ok")]);
		const rec = recorder();
		const send = async () => (await chatWith(chatBody(model, { temperature: 0 }), { ANALYTICS: rec.dataset }, { "x-backhaul-cache-ttl": "60" })).text();
		await send();
		await send();
		const [miss, hit] = await points(rec, 2);
		expect(miss).toMatchObject({ index: "anonymous", model, tier: "region", region: "r0-ok", status_class: "2xx", cache: "miss", error_code: "", path: "/v1/chat/completions", reason: "no-edge-model", status: 200, attempts: 1, prompt_tokens: 3, completion_tokens: 4 });
		expect(hit).toMatchObject({ model, tier: "cache", region: "", status_class: "2xx", cache: "hit", status: 200, attempts: 0, prompt_tokens: 3, completion_tokens: 4 });
		expect(rec.points).toHaveLength(2);
		for (const p of [miss!, hit!]) {
			expect(p.duration_ms).toBeGreaterThanOrEqual(0);
			expect(p.ttfb_ms as number).toBeLessThanOrEqual(p.duration_ms as number);
		}
	});

	it("record a region failover: the region that answered, every attempt counted", async () => {
		const { model } = await deploy([near("status503"), far("ok")]);
		const rec = recorder();
		const res = await chatWith(chatBody(model), { ANALYTICS: rec.dataset }, {}, LONDON);
		expect(res.headers.get("x-backhaul-region")).toBe("r1-ok");
		await res.text();
		expect(await points(rec, 1)).toEqual([
			expect.objectContaining({ tier: "region", region: "r1-ok", status_class: "2xx", cache: "none", status: 200, attempts: 2, prompt_tokens: 3, completion_tokens: 4 }),
		]);
	});

	it("record a relayed stream once it has ended, with how it ended", async () => {
		const { model } = await deploy([near("truncated")]);
		const rec = recorder();
		await (await chatWith(chatBody(model, { stream: true }), { ANALYTICS: rec.dataset })).text();
		expect(await points(rec, 1)).toEqual([expect.objectContaining({ region: "r0-truncated", status: 200, stream_end: "truncated", prompt_tokens: 0, completion_tokens: 0 })]);
	});

	it("record errors with their OpenAI code: the Worker's own, a region's passed on, every region failed", async () => {
		const rec = recorder();
		const unknown = uid("nope-");
		await (await chatWith(chatBody(unknown), { ANALYTICS: rec.dataset })).text();
		const { model: refusing } = await deploy([near("badrequest")]);
		await (await chatWith(chatBody(refusing), { ANALYTICS: rec.dataset })).text();
		const { model: down } = await deploy([near("status503")]);
		await (await chatWith(chatBody(down), { ANALYTICS: rec.dataset })).text();
		await (await chatWith({ model: down, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }, { ANALYTICS: rec.dataset })).text();
		expect(await points(rec, 4)).toEqual([
			expect.objectContaining({ model: unknown, tier: "", region: "", status_class: "4xx", error_code: "model_not_found", status: 404, attempts: 0 }),
			expect.objectContaining({ model: refusing, tier: "region", region: "r0-badrequest", status_class: "4xx", error_code: "invalid_argument", status: 400, attempts: 1 }),
			expect.objectContaining({ model: down, tier: "region", region: "r0-status503", status_class: "5xx", error_code: "regions_failed", status: 503, attempts: 1 }),
			expect.objectContaining({ model: down, tier: "", status_class: "4xx", error_code: "unsupported_content_part", status: 400, attempts: 0 }),
		]);
	});

	it("record an edge answer, and a key's hash as the index", async () => {
		const model = uid("edge-");
		const name = uid("md");
		await publish(makeRoute({ name, region: "r0", model, edgeModel: "@cf/meta/llama-3.2-1b-instruct", endpoint: upstream("ok", `${name}-r0`) }));
		const ai: AiRunner = { run: async () => ({ response: "hi", usage: { prompt_tokens: 6, completion_tokens: 1, total_tokens: 7 } }) };
		const rec = recorder();
		const res = await chatWith(chatBody(model), { ANALYTICS: rec.dataset, AI: ai, BACKHAUL_API_KEYS: "key-for-analytics-0001" }, { authorization: "Bearer key-for-analytics-0001" });
		expect(res.headers.get("x-backhaul-tier")).toBe("edge");
		await res.text();
		const [p] = await points(rec, 1);
		expect(p).toMatchObject({ tier: "edge", region: "edge", reason: "light", attempts: 1, prompt_tokens: 6, completion_tokens: 1 });
		expect(p!.index).toMatch(/^[0-9a-f]{16}$/);
	});

	it("cover /v1/models and unknown /v1 paths too, as the access log does", async () => {
		const rec = recorder();
		await (await callWorker("/v1/models", {}, { ANALYTICS: rec.dataset })).text();
		await (await callWorker("/v1/embeddings", { method: "POST", body: "{}" }, { ANALYTICS: rec.dataset })).text();
		await (await callWorker("/health", {}, { ANALYTICS: rec.dataset })).text();
		expect(await points(rec, 2)).toEqual([
			expect.objectContaining({ path: "/v1/models", status: 200, model: "" }),
			expect.objectContaining({ path: "/v1/embeddings", status: 404, error_code: "not_found" }),
		]);
	});

	it("change nothing when unbound, or when the write throws", async () => {
		const { model, ids } = await deploy([near("ok")]);
		const unbound = await chatWith(chatBody(model), { ANALYTICS: undefined });
		expect(unbound.status).toBe(200);
		expect(await unbound.json()).toMatchObject({ choices: [{ message: { content: `hello from ${ids[0]}` } }] });
		const error = vi.spyOn(console, "error").mockImplementation(() => {});
		const failing = {
			writeDataPoint: () => {
				throw new Error("dataset unavailable");
			},
		};
		const res = await chatWith(chatBody(model), { ANALYTICS: failing });
		expect(res.status).toBe(200);
		expect(res.headers.get("x-backhaul-region")).toBe("r0-ok");
		await res.text();
		expect(error).toHaveBeenCalledWith("analytics data point not written", expect.objectContaining({ error: "Error: dataset unavailable" }));
	});
});
