/**
 * Watches an SSE byte stream for the two events that decide how a relayed
 * stream may end: `data: [DONE]` and an error event `data: {"error": …`,
 * each at the start of a line. Pure. Works on the bytes as they arrive, across
 * chunk boundaries, without decoding them: equivalent to testing
 * /(^|\n)data:\s*\[DONE\]/ and /(^|\n)data:\s*\{\s*"error"\s*:/ on the whole
 * text so far (\s here being ASCII whitespace).
 */
const enum S {
	/** at the start of a line: `data:` may begin */
	LineStart,
	/** inside `data:`, `k` bytes matched */
	Data,
	/** after `data:`, skipping whitespace */
	AfterColon,
	/** inside `[DONE]`, `k` bytes matched */
	Done,
	/** after `{`, skipping whitespace before `"error"` */
	AfterBrace,
	/** inside `"error"`, `k` bytes matched */
	ErrorKey,
	/** after `"error"`, skipping whitespace before `:` */
	AfterKey,
	/** anywhere else: nothing matters until the next newline */
	Skip,
}

const DATA = [0x64, 0x61, 0x74, 0x61, 0x3a]; // data:
const DONE = [0x5b, 0x44, 0x4f, 0x4e, 0x45, 0x5d]; // [DONE]
const ERROR_KEY = [0x22, 0x65, 0x72, 0x72, 0x6f, 0x72, 0x22]; // "error"
const NL = 0x0a;

/** \s for ASCII: space, \t, \n, \v, \f, \r. */
const isSpace = (b: number) => b === 0x20 || (b >= 0x09 && b <= 0x0d);

export class SseWatcher {
	sawDone = false;
	sawError = false;
	private state = S.LineStart;
	private k = 0;
	private prevNl = false;

	push(bytes: Uint8Array): void {
		let state = this.state;
		let k = this.k;
		let prevNl = this.prevNl;
		for (let i = 0; i < bytes.length; i++) {
			const b = bytes[i]!;
			const nl = prevNl;
			prevNl = b === NL;
			switch (state) {
				case S.Skip:
					if (b === NL) state = S.LineStart;
					continue;
				case S.LineStart:
					if (b === DATA[0]) {
						state = S.Data;
						k = 1;
					} else if (b !== NL) state = S.Skip;
					continue;
				case S.Data:
					if (b === DATA[k]) {
						if (++k === DATA.length) state = S.AfterColon;
						continue;
					}
					break;
				case S.AfterColon:
					if (isSpace(b)) continue;
					if (b === DONE[0]) {
						state = S.Done;
						k = 1;
						continue;
					}
					if (b === 0x7b) {
						state = S.AfterBrace;
						continue;
					}
					break;
				case S.Done:
					if (b === DONE[k]) {
						if (++k === DONE.length) {
							this.sawDone = true;
							state = S.Skip;
						}
						continue;
					}
					break;
				case S.AfterBrace:
					if (isSpace(b)) continue;
					if (b === ERROR_KEY[0]) {
						state = S.ErrorKey;
						k = 1;
						continue;
					}
					break;
				case S.ErrorKey:
					if (b === ERROR_KEY[k]) {
						if (++k === ERROR_KEY.length) state = S.AfterKey;
						continue;
					}
					break;
				case S.AfterKey:
					if (isSpace(b)) continue;
					if (b === 0x3a) {
						this.sawError = true;
						state = S.Skip;
						continue;
					}
					break;
			}
			// No match here. A newline starts the next line; so does the byte
			// after one (whitespace may hold newlines): it may begin `data:`.
			if (b === NL) state = S.LineStart;
			else if (nl && b === DATA[0]) {
				state = S.Data;
				k = 1;
			} else state = S.Skip;
		}
		this.state = state;
		this.k = k;
		this.prevNl = prevNl;
	}
}
