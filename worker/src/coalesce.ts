/**
 * Request coalescing (issue 18): identical cacheable requests in flight at
 * once in this isolate share one upstream generation. This module owns the
 * isolate's only map of flights; nothing else holds flight state.
 *
 * A flight is led by the request that started it: its task runs the
 * generation once (under a signal of the flight's, not of any one client)
 * and records the answer as it comes: the status and headers, then the
 * body's chunks. Every waiter, the leader's own client included, gets a
 * fresh stream that replays the chunks so far and then follows, so a waiter
 * that joins a streamed answer half way still gets it from its start. A
 * waiter that goes away only leaves; the upstream is aborted when the last
 * waiter has left before the answer was complete.
 *
 * Workers keep each request's I/O to itself: a stream of one request cannot
 * be read by another, and a promise made in one request cannot be resolved
 * from another ("Cannot perform I/O on behalf of a different request"). So
 * waiters read plain byte copies from the flight, and nothing is signalled
 * across requests: the leader's own client is woken at once (same request),
 * every other waiter looks for news every FOLLOWER_POLL_MS on its own timer,
 * and the leader's task looks every ABANDON_POLL_MS for a flight every waiter
 * has left (flight.abandoned()).
 */

/** How often a coalesced waiter (not the leader's own client) looks for new chunks. */
export const FOLLOWER_POLL_MS = 10;
/** How often the leader's task looks whether every waiter has left. */
export const ABANDON_POLL_MS = 50;

export interface FlightHead {
	status: number;
	headers: [string, string][];
}

export class Flight {
	head: FlightHead | null = null;
	readonly chunks: Uint8Array[] = [];
	ended = false;
	/** waiters that have joined and not left */
	waiters = 0;
	private joined = false;
	/** the leader's own client's wake-ups: same request as the pushes, so a promise is fine */
	private wakers: (() => void)[] = [];

	/** Every waiter has left before the end: the leader should stop the upstream. */
	abandoned(): boolean {
		return this.joined && this.waiters === 0 && !this.ended;
	}

	setHead(head: FlightHead): void {
		this.head = head;
		this.wake();
	}

	push(chunk: Uint8Array): void {
		this.chunks.push(chunk);
		this.wake();
	}

	end(): void {
		this.ended = true;
		this.wake();
	}

	private wake(): void {
		const w = this.wakers;
		this.wakers = [];
		for (const f of w) f();
	}

	/** Resolves at the next change (the leader's client), or after FOLLOWER_POLL_MS (anyone else: its own timer). */
	private changed(leader: boolean): Promise<void> {
		return new Promise((resolve) => (leader ? this.wakers.push(resolve) : setTimeout(resolve, FOLLOWER_POLL_MS)));
	}

	/**
	 * Joins the flight: its head once known, and a body that replays every
	 * chunk from the first. `signal` (the client's) leaves when it aborts, as
	 * does cancelling the body. `leader`: the caller is the request whose task
	 * runs the flight.
	 */
	async join(signal: AbortSignal | undefined, leader: boolean): Promise<{ head: FlightHead; body: ReadableStream<Uint8Array> }> {
		this.waiters++;
		this.joined = true;
		let left = false;
		const leave = () => {
			if (left) return;
			left = true;
			signal?.removeEventListener("abort", leave);
			this.waiters--;
		};
		signal?.addEventListener("abort", leave);
		if (signal?.aborted) leave();
		while (this.head === null && !left) await this.changed(leader);
		let i = 0;
		const body = new ReadableStream<Uint8Array>({
			pull: async (controller) => {
				while (i >= this.chunks.length && !this.ended && !left) await this.changed(leader);
				if (i < this.chunks.length) {
					// A copy: each waiter's runtime owns (and may detach) what it is given.
					controller.enqueue(this.chunks[i++]!.slice());
					return;
				}
				leave();
				controller.close();
			},
			cancel: () => leave(),
		});
		return { head: this.head ?? { status: 499, headers: [] }, body };
	}
}

/** This isolate's flights, by coalescing key. */
const flights = new Map<string, Flight>();

/**
 * The flight for `key`: the one in the air (`leader: false`), or a new one
 * (`leader: true`, and the caller must run it and call `land`).
 */
export function board(key: string): { flight: Flight; leader: boolean } {
	const existing = flights.get(key);
	if (existing) return { flight: existing, leader: false };
	const flight = new Flight();
	flights.set(key, flight);
	return { flight, leader: true };
}

/** Removes the flight; later requests start their own (or hit the cache). */
export function land(key: string, flight: Flight): void {
	if (flights.get(key) === flight) flights.delete(key);
}

/** How many flights are in the air (tests). */
export const flightsInAir = (): number => flights.size;
