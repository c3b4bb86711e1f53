import { describe, expect, it } from "vitest";
import { sign, verifySignature } from "../../src/signature";

const enc = new TextEncoder();
const now = 1_795_000_000;
const body = enc.encode('{"a":1}');
const path = "/admin/v1/routes/default/smollm2/us-east";

async function check(opts: { ts?: string | null; sig?: string | null; body?: Uint8Array; method?: string; nowSeconds?: number } = {}) {
	const ts = opts.ts === undefined ? String(now) : opts.ts;
	const sig = opts.sig === undefined ? await sign("s3cret", String(now), "PUT", path, body) : opts.sig;
	return verifySignature({
		secret: "s3cret",
		timestampHeader: ts,
		signatureHeader: sig,
		method: opts.method ?? "PUT",
		path,
		body: opts.body ?? body,
		nowSeconds: opts.nowSeconds ?? now,
	});
}

describe("signatures", () => {
	it("signs HMAC-SHA256 over timestamp.METHOD.path.body as v1=<lowercase hex>", async () => {
		// Independent of src/signature.ts: the MAC computed here directly.
		const key = await crypto.subtle.importKey("raw", enc.encode("s3cret"), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
		const mac = await crypto.subtle.sign("HMAC", key, enc.encode(`${now}.PUT.${path}.{"a":1}`));
		const hex = [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
		expect(await sign("s3cret", String(now), "put", path, body)).toBe(`v1=${hex}`);
	});
	it("matches the operator's signer (operator/src/publish.rs test vectors)", async () => {
		expect(await sign("secret", "1700000000", "put", "/admin/v1/routes/a/b/c", enc.encode("{}"))).toBe(
			"v1=64d5c85d2bbf408f43a6c1f087ece39ea6b9c86cd68ecb8b5e2b358a5aeef3bd",
		);
		expect(await sign("secret", "1700000000", "DELETE", "/admin/v1/routes/a/b/c", new Uint8Array())).toBe(
			"v1=0af6ad37dc0dfd75047f8e0cc4b52fd62dcfa415df7df0fc7afdc41c8aed8969",
		);
	});
	it("accepts a good signature within 300 s either way", async () => {
		expect(await check()).toEqual({ ok: true });
		expect(await check({ nowSeconds: now + 300 })).toEqual({ ok: true });
		expect(await check({ nowSeconds: now - 300 })).toEqual({ ok: true });
	});
	it("rejects stale and future timestamps", async () => {
		expect((await check({ nowSeconds: now + 301 })).ok).toBe(false);
		expect((await check({ nowSeconds: now - 301 })).ok).toBe(false);
	});
	it("rejects missing, malformed and wrong signatures", async () => {
		expect(await check({ ts: null })).toMatchObject({ ok: false, reason: expect.stringContaining("Timestamp is missing") });
		expect(await check({ ts: "12.5" })).toMatchObject({ ok: false });
		expect(await check({ sig: null })).toMatchObject({ ok: false, reason: expect.stringContaining("Signature is missing") });
		expect(await check({ sig: "v2=00" })).toMatchObject({ ok: false, reason: expect.stringContaining("v1=") });
		expect(await check({ sig: `v1=${"0".repeat(64)}` })).toMatchObject({ ok: false, reason: expect.stringContaining("does not match") });
		const upper = (await sign("s3cret", String(now), "PUT", path, body)).toUpperCase().replace("V1=", "v1=");
		expect((await check({ sig: upper })).ok).toBe(false);
	});
	it("rejects a tampered body or a different method", async () => {
		expect((await check({ body: enc.encode('{"a":2}') })).ok).toBe(false);
		expect((await check({ method: "DELETE" })).ok).toBe(false);
	});
});
