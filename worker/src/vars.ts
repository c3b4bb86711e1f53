/** Reading the Worker's numeric vars: a value that is not what it must be falls back to the documented default, never to no limit. */

/** A var that must be a positive integer; `fallback` when unset or anything else. */
export function positiveIntVar(value: string | undefined, fallback: number): number {
	const v = Number(value);
	return value !== undefined && value.trim() !== "" && Number.isInteger(v) && v > 0 ? v : fallback;
}

/** MAX_ROUTES_PER_PUBLISHER's default (docs/publication.md, "A cap per publisher"). */
export const DEFAULT_MAX_ROUTES_PER_PUBLISHER = 5000;

export function maxRoutesPerPublisher(env: Env): number {
	return positiveIntVar(env.MAX_ROUTES_PER_PUBLISHER, DEFAULT_MAX_ROUTES_PER_PUBLISHER);
}
