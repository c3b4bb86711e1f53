/**
 * Admin request signatures (docs/publication.md, "Publisher keys and
 * signatures"): Ed25519 over
 * `"backhaul-v2.{keyId}.{timestamp}.{METHOD}.{path}." + body`, carried as
 *
 *   X-Backhaul-Key-Id:    [A-Za-z0-9_-]{1,64}
 *   X-Backhaul-Timestamp: Unix time in whole seconds, within ±300 s of the Worker's clock
 *   X-Backhaul-Signature: ed25519=<standard base64, padded, of the 64-byte signature>
 *
 * The Worker holds public keys only, so nothing it stores can forge a
 * publication. Verification is WebCrypto's Ed25519 in workerd.
 */
export const SIGNATURE_WINDOW_SECONDS = 300;
export const KEY_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** 64 bytes in padded standard base64 are 88 characters: 86 of data and "==". */
const SIGNATURE_PATTERN = /^ed25519=([A-Za-z0-9+/]{86}==)$/;
const TIMESTAMP_PATTERN = /^[0-9]{1,12}$/;

const encoder = new TextEncoder();

/** The bytes a publisher signs. `method` is upper-cased; `path` is the URL path without query. */
export function signingPayload(keyId: string, timestamp: string, method: string, path: string, body: Uint8Array): Uint8Array {
	const head = encoder.encode(`backhaul-v2.${keyId}.${timestamp}.${method.toUpperCase()}.${path}.`);
	const out = new Uint8Array(head.length + body.length);
	out.set(head, 0);
	out.set(body, head.length);
	return out;
}

/** Strict standard base64 (with padding) → bytes; null when it is anything else. */
export function decodeBase64(s: string): Uint8Array | null {
	if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return null;
	let bin: string;
	try {
		bin = atob(s);
	} catch {
		return null;
	}
	const out = new Uint8Array(bin.length);
	for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
	// Canonical only: the same bytes encode back to the same text (no stray bits in the padding).
	return encodeBase64(out) === s ? out : null;
}

export function encodeBase64(bytes: Uint8Array): string {
	let bin = "";
	for (const b of bytes) bin += String.fromCharCode(b);
	return btoa(bin);
}

/** A raw 32-byte Ed25519 public key, for verifying. */
export function importPublicKey(raw: Uint8Array): Promise<CryptoKey> {
	return crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
}

export interface SignatureHeaders {
	keyId: string;
	timestamp: string;
	signature: Uint8Array;
}

export type HeaderCheck = ({ ok: true } & SignatureHeaders) | { ok: false; reason: string };

/**
 * Reads and checks the three headers' form and the timestamp window, before
 * the key is looked up and the body read.
 */
export function readSignatureHeaders(headers: Headers, nowSeconds: number): HeaderCheck {
	const keyId = headers.get("x-backhaul-key-id");
	const timestamp = headers.get("x-backhaul-timestamp");
	const signature = headers.get("x-backhaul-signature");
	if (keyId === null) return { ok: false, reason: "X-Backhaul-Key-Id is missing" };
	if (!KEY_ID_PATTERN.test(keyId)) return { ok: false, reason: "X-Backhaul-Key-Id must be 1-64 characters of [A-Za-z0-9_-]" };
	if (timestamp === null) return { ok: false, reason: "X-Backhaul-Timestamp is missing" };
	if (!TIMESTAMP_PATTERN.test(timestamp)) return { ok: false, reason: "X-Backhaul-Timestamp must be Unix time in whole seconds" };
	if (Math.abs(nowSeconds - Number(timestamp)) > SIGNATURE_WINDOW_SECONDS) {
		return { ok: false, reason: `X-Backhaul-Timestamp is more than ${SIGNATURE_WINDOW_SECONDS} s from the Worker's clock` };
	}
	if (signature === null) return { ok: false, reason: "X-Backhaul-Signature is missing" };
	const m = SIGNATURE_PATTERN.exec(signature);
	const bytes = m ? decodeBase64(m[1]!) : null;
	if (!bytes || bytes.length !== 64) return { ok: false, reason: "X-Backhaul-Signature must be ed25519=<88 characters of padded base64>" };
	return { ok: true, keyId, timestamp, signature: bytes };
}

/** Whether `signature` is `publicKey`'s Ed25519 signature of the request. */
export async function verifySignature(opts: {
	publicKey: CryptoKey;
	keyId: string;
	timestamp: string;
	signature: Uint8Array;
	method: string;
	path: string;
	body: Uint8Array;
}): Promise<boolean> {
	const payload = signingPayload(opts.keyId, opts.timestamp, opts.method, opts.path, opts.body);
	try {
		return await crypto.subtle.verify({ name: "Ed25519" }, opts.publicKey, opts.signature, payload);
	} catch {
		return false;
	}
}
