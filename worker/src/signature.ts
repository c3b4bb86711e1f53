/**
 * Admin request signatures (docs/publication.md, "Signature"):
 * `X-Backhaul-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{METHOD}.{path}.{body}")>`
 * with `X-Backhaul-Timestamp` within ±300 s of the Worker's clock.
 */
export const SIGNATURE_WINDOW_SECONDS = 300;

const encoder = new TextEncoder();

export function signingPayload(timestamp: string, method: string, path: string, body: Uint8Array): Uint8Array {
	const head = encoder.encode(`${timestamp}.${method.toUpperCase()}.${path}.`);
	const out = new Uint8Array(head.length + body.length);
	out.set(head, 0);
	out.set(body, head.length);
	return out;
}

async function hmacKey(secret: string, usage: "sign" | "verify"): Promise<CryptoKey> {
	return crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, [usage]);
}

const toHex = (buf: ArrayBuffer): string => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");

/** The header value the operator sends: `v1=<hex>`. */
export async function sign(secret: string, timestamp: string, method: string, path: string, body: Uint8Array): Promise<string> {
	const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret, "sign"), signingPayload(timestamp, method, path, body));
	return `v1=${toHex(mac)}`;
}

export type SignatureCheck = { ok: true } | { ok: false; reason: string };

/**
 * Checks a request's signature headers. `crypto.subtle.verify` compares the
 * MAC in constant time, so no byte-by-byte comparison happens here.
 */
export async function verifySignature(opts: {
	secret: string;
	timestampHeader: string | null;
	signatureHeader: string | null;
	method: string;
	path: string;
	body: Uint8Array;
	nowSeconds: number;
}): Promise<SignatureCheck> {
	const { timestampHeader: ts, signatureHeader: sig } = opts;
	if (ts === null) return { ok: false, reason: "X-Backhaul-Timestamp is missing" };
	if (!/^\d{1,12}$/.test(ts)) return { ok: false, reason: "X-Backhaul-Timestamp must be Unix time in whole seconds" };
	if (Math.abs(opts.nowSeconds - Number(ts)) > SIGNATURE_WINDOW_SECONDS) {
		return { ok: false, reason: `X-Backhaul-Timestamp is more than ${SIGNATURE_WINDOW_SECONDS} s from the Worker's clock` };
	}
	if (sig === null) return { ok: false, reason: "X-Backhaul-Signature is missing" };
	const m = /^v1=([0-9a-f]{64})$/.exec(sig);
	if (!m) return { ok: false, reason: "X-Backhaul-Signature must be v1=<64 lowercase hex digits>" };
	const mac = new Uint8Array(32);
	for (let i = 0; i < 32; i++) mac[i] = parseInt(m[1]!.slice(i * 2, i * 2 + 2), 16);
	const good = await crypto.subtle.verify(
		"HMAC",
		await hmacKey(opts.secret, "verify"),
		mac,
		signingPayload(ts, opts.method, opts.path, opts.body),
	);
	return good ? { ok: true } : { ok: false, reason: "X-Backhaul-Signature does not match" };
}
