/**
 * The lease of docs/publication.md ("Leases"): one signed renewal per
 * operator per interval keeps every route its key last wrote live. Pure:
 * the body's validation and the digest both sides compute over the routes
 * a key holds, tested against docs/schemas/lease-digest-vectors.json.
 */
import { BOUNDS, ValidationError } from "./route";

/** The PUT /admin/v1/leases/{keyId} body. */
export interface LeaseRequest {
	/** Above the stored lease's (a replayed heartbeat cannot keep a dead operator's routes alive). */
	sequence: number;
	/** The operator's count of the routes it holds. */
	routes: number;
	/** The operator's `leaseDigest` of them. */
	digest: string;
}

/** A route's line in the digest. */
export interface HeldRoute {
	/** `{namespace}/{name}/{region}` (route.ts `routeKey`). */
	key: string;
	sequence: number;
}

const DIGEST = /^[0-9a-f]{64}$/;

/** Validates a parsed lease body, or throws ValidationError naming the field. Unknown fields are ignored, as in a route. */
export function validateLease(raw: unknown): LeaseRequest {
	if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ValidationError("body", 'must be {"sequence", "routes", "digest"}');
	const o = raw as Record<string, unknown>;
	const int = (f: "sequence" | "routes", min: number, max: number): number => {
		const v = o[f];
		if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) throw new ValidationError(f, `must be an integer in [${min}, ${max}]`);
		return v;
	};
	const sequence = int("sequence", ...BOUNDS.sequence);
	const routes = int("routes", 0, Number.MAX_SAFE_INTEGER);
	const digest = o.digest;
	if (typeof digest !== "string" || !DIGEST.test(digest)) throw new ValidationError("digest", "must be 64 lower-case hex digits (SHA-256)");
	return { sequence, routes, digest };
}

const encoder = new TextEncoder();

/**
 * Lower-case hex SHA-256 of the lines `"{namespace}/{name}/{region} {sequence}\n"`,
 * sorted bytewise (route keys are ASCII, so code-unit order is byte order);
 * the empty set's is SHA-256 of "".
 */
export async function leaseDigest(held: readonly HeldRoute[]): Promise<string> {
	const lines = held.map((h) => `${h.key} ${h.sequence}\n`).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
	const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(lines.join(""))));
	let hex = "";
	for (const b of digest) hex += b.toString(16).padStart(2, "0");
	return hex;
}
