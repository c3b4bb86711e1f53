/**
 * The Worker's verifier against docs/schemas/publication-signature-vectors.json
 * (made by scripts/signature-vectors.py with Python's cryptography, an
 * implementation independent of this one), and its header checks.
 */
import { describe, expect, it } from "vitest";
import vectors from "../../../docs/schemas/publication-signature-vectors.json";
import { decodeBase64, importPublicKey, readSignatureHeaders, signingPayload, verifySignature } from "../../src/signature";
import { importPrivateKey, KEYS, sign } from "../helpers";

const enc = new TextEncoder();
const hex = (h: string) => Uint8Array.from(h.match(/../g) ?? [], (b) => parseInt(b, 16));
const keyOf = (id: string) => (vectors.keys as Record<string, { seed: string; publicKey: string; pkcs8Pem: string }>)[id]!;
const publicKeyOf = (id: string) => importPublicKey(decodeBase64(keyOf(id).publicKey)!);
type Case = (typeof vectors.cases)[number];

function headersOf(c: { keyId: string; timestamp: string; signature: string }): Headers {
	return new Headers({ "x-backhaul-key-id": c.keyId, "x-backhaul-timestamp": c.timestamp, "x-backhaul-signature": c.signature });
}

/** The Worker's whole check of a case: headers read at the case's own time, then the signature. */
async function verifies(c: Case, publicKeyId = c.keyId): Promise<boolean> {
	const h = readSignatureHeaders(headersOf(c), Number(c.timestamp));
	if (!h.ok) throw new Error(h.reason);
	return verifySignature({ ...h, publicKey: await publicKeyOf(publicKeyId), method: c.method, path: c.path, body: enc.encode(c.body) });
}

describe("Ed25519 signature vectors", () => {
	it("verifies RFC 8032 TEST 1 with WebCrypto's Ed25519, and refuses it with one bit changed", async () => {
		const t = vectors.rfc8032Test1;
		const key = await importPublicKey(hex(t.publicKey));
		expect(await crypto.subtle.verify({ name: "Ed25519" }, key, hex(t.signature), hex(t.message))).toBe(true);
		const flipped = hex(t.signature);
		flipped[0]! ^= 1;
		expect(await crypto.subtle.verify({ name: "Ed25519" }, key, flipped, hex(t.message))).toBe(false);
	});

	it("builds exactly the signed bytes of every case", () => {
		for (const c of vectors.cases) {
			const bytes = signingPayload(c.keyId, c.timestamp, c.method.toLowerCase(), c.path, enc.encode(c.body));
			expect(new TextDecoder().decode(bytes), c.signedBytes).toBe(c.signedBytes);
			expect(bytes).toEqual(enc.encode(c.signedBytes));
		}
	});

	it("verifies every case with its key's public key", async () => {
		expect(vectors.cases.length).toBeGreaterThanOrEqual(5);
		for (const c of vectors.cases) expect(await verifies(c), `${c.method} ${c.path}`).toBe(true);
	});

	it("refuses every case when any signed part is changed", async () => {
		const otherKey = (id: string) => Object.keys(vectors.keys).find((k) => k !== id)!;
		for (const c of vectors.cases) {
			const tampered: [string, Case][] = [
				["key id", { ...c, keyId: otherKey(c.keyId) }],
				["key id case", { ...c, keyId: c.keyId.toUpperCase() }],
				["timestamp", { ...c, timestamp: String(Number(c.timestamp) + 1) }],
				["method", { ...c, method: c.method === "PUT" ? "DELETE" : "PUT" }],
				["path", { ...c, path: c.path.replace("/admin/v1/", "/admin/v2/") }],
				["path suffix", { ...c, path: `${c.path}/` }],
				["body", { ...c, body: c.body === "" ? " " : c.body.replace(/.$/, " ") }],
				["body appended", { ...c, body: `${c.body}\n` }],
			];
			for (const [what, t] of tampered) {
				// Verified with the public key of the key that really signed (the key id check is the lookup's; here the bytes differ).
				expect(await verifies(t, c.keyId), `${what}: ${c.method} ${c.path}`).toBe(false);
			}
			expect(await verifies(c, otherKey(c.keyId)), `another key: ${c.method} ${c.path}`).toBe(false);
		}
	});

	it("imports the vectors' PKCS#8 keys in workerd and signs exactly the vectors' signatures (Ed25519 is deterministic)", async () => {
		for (const c of vectors.cases) {
			const k = keyOf(c.keyId);
			expect(k.pkcs8Pem.startsWith("-----BEGIN PRIVATE KEY-----")).toBe(true);
			expect(await sign(k.pkcs8Pem, c.keyId, c.timestamp, c.method, c.path, enc.encode(c.body))).toBe(c.signature);
		}
	});

	it("has the same public keys as the test configuration, and each test key's PKCS#8 matches its public key", async () => {
		expect(KEYS.usEast.publicKey).toBe(keyOf("cluster-us-east").publicKey);
		expect(KEYS.euWest.publicKey).toBe(keyOf("cluster-eu-west").publicKey);
		for (const k of Object.values(KEYS)) {
			const der = Uint8Array.from(atob(k.pkcs8Pem.replace(/-----[A-Z ]+-----|\s/g, "")), (ch) => ch.charCodeAt(0));
			const extractable = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, true, ["sign"]);
			const jwk = (await crypto.subtle.exportKey("jwk", extractable)) as JsonWebKey;
			expect(btoa(atob(jwk.x!.replace(/-/g, "+").replace(/_/g, "/"))), k.id).toBe(k.publicKey);
			expect(await importPrivateKey(k.pkcs8Pem)).toBeInstanceOf(CryptoKey);
		}
	});
});

describe("signature headers", () => {
	const c = vectors.cases[0]!;
	const now = Number(c.timestamp);
	const read = (over: Record<string, string | null>, nowSeconds = now) => {
		const h = headersOf(c);
		for (const [k, v] of Object.entries(over)) v === null ? h.delete(k) : h.set(k, v);
		return readSignatureHeaders(h, nowSeconds);
	};

	it("accepts a timestamp within 300 s either way and refuses one further", () => {
		expect(read({}).ok).toBe(true);
		expect(read({}, now + 300).ok).toBe(true);
		expect(read({}, now - 300).ok).toBe(true);
		expect(read({}, now + 301)).toMatchObject({ ok: false, reason: expect.stringContaining("300 s") });
		expect(read({}, now - 301)).toMatchObject({ ok: false, reason: expect.stringContaining("300 s") });
	});

	it("refuses missing and malformed headers, naming them", () => {
		const sig = c.signature.slice("ed25519=".length);
		const cases: [Record<string, string | null>, string][] = [
			[{ "x-backhaul-key-id": null }, "Key-Id is missing"],
			[{ "x-backhaul-key-id": "" }, "Key-Id must be"],
			[{ "x-backhaul-key-id": "a.b" }, "Key-Id must be"],
			[{ "x-backhaul-key-id": "k".repeat(65) }, "Key-Id must be"],
			[{ "x-backhaul-timestamp": null }, "Timestamp is missing"],
			[{ "x-backhaul-timestamp": "1796112000.5" }, "whole seconds"],
			[{ "x-backhaul-timestamp": "-1796112000" }, "whole seconds"],
			[{ "x-backhaul-signature": null }, "Signature is missing"],
			[{ "x-backhaul-signature": sig }, "ed25519="],
			[{ "x-backhaul-signature": `v1=${"0".repeat(64)}` }, "ed25519="],
			[{ "x-backhaul-signature": `ed25519=${sig.replace(/=+$/, "")}` }, "ed25519="],
			[{ "x-backhaul-signature": `ed25519=${sig}==` }, "ed25519="],
			[{ "x-backhaul-signature": `ed25519=${sig.replace(/\+/g, "-").replace(/\//g, "_")}` }, "ed25519="],
			[{ "x-backhaul-signature": `ed25519=${"A".repeat(84)}====` }, "ed25519="],
			[{ "x-backhaul-signature": `ED25519=${sig}` }, "ed25519="],
		];
		for (const [over, reason] of cases) expect(read(over), JSON.stringify(over)).toMatchObject({ ok: false, reason: expect.stringContaining(reason) });
	});

	it("refuses a signature whose base64 is not canonical", async () => {
		// The last character of a 64-byte base64 carries 4 bits of padding: setting one changes the text, not the bytes.
		const sig = c.signature.slice("ed25519=".length);
		const last = sig[85]!;
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
		const sloppy = sig.slice(0, 85) + alphabet[alphabet.indexOf(last) ^ 1] + "==";
		expect(atob(sloppy)).toBe(atob(sig));
		expect(read({ "x-backhaul-signature": `ed25519=${sloppy}` }).ok).toBe(false);
		expect(decodeBase64(sig)!.length).toBe(64);
		expect(decodeBase64("QQ==")).toEqual(new Uint8Array([65]));
		expect(decodeBase64("QR==")).toBeNull();
		expect(decodeBase64("QQ")).toBeNull();
		expect(decodeBase64("Q Q=")).toBeNull();
	});
});
