/**
 * How far a RegExp can look: upper bounds on the characters one match
 * attempt examines, from where it starts and before it. A RegExp delimiter that
 * found no match in the buffered text need not try again from any start
 * that bound keeps clear of the end: more bytes cannot change those
 * attempts, so a frame arriving in small pieces is scanned in linear time
 * instead of once per piece from its start.
 */

/**
 * What a piece of a pattern may consume (`len`) and examine (`reach`), both
 * from where it starts, and how far before its start it may look (`back`).
 */
interface Extent {
  len: number;
  reach: number;
  back: number;
}

const CHAR: Extent = { len: 1, reach: 1, back: 0 };

/** How far a RegExp can look, forwards and back, from where a match attempt starts. */
export interface RegexReach {
  /**
   * Characters from the attempt's start it may examine: what it matches,
   * what lookaheads read, and the character a `$` or `\b` at its end
   * checks. `Infinity` when unbounded or not understood.
   */
  readonly reach: number;
  /** Characters before the attempt's start it may examine (`^` and `\b` look at one, a lookbehind at what it matches). */
  readonly back: number;
}

/** The pattern is beyond what this conservative parser bounds. */
class Unbounded extends Error {}

const UNKNOWN: RegexReach = { reach: Infinity, back: Infinity };

/**
 * Upper bounds on what a match attempt of `re` may examine; both
 * `Infinity` when the pattern can match unboundedly much (`*`, `+`,
 * `{n,}`), uses backreferences or the `v` flag, or is not understood.
 */
export function regexReach(re: RegExp): RegexReach {
  if (re.flags.includes("v")) return UNKNOWN;
  const parser = new Parser(re.source, re.flags.includes("u"));
  try {
    const extent = parser.alternation();
    return parser.atEnd() ? { reach: extent.reach, back: extent.back } : UNKNOWN;
  } catch (err) {
    if (err instanceof Unbounded) return UNKNOWN;
    throw err;
  }
}

class Parser {
  #i = 0;
  constructor(
    readonly src: string,
    readonly unicode: boolean,
  ) {}

  atEnd(): boolean {
    return this.#i >= this.src.length;
  }

  /** `a|b|…` up to a `)` or the end. */
  alternation(): Extent {
    let best = this.sequence();
    while (this.src[this.#i] === "|") {
      this.#i++;
      const next = this.sequence();
      best = { len: Math.max(best.len, next.len), reach: Math.max(best.reach, next.reach), back: Math.max(best.back, next.back) };
    }
    return best;
  }

  /** Terms one after another, up to a `|`, a `)` or the end. */
  sequence(): Extent {
    let len = 0;
    let reach = 0;
    let back = 0;
    while (!this.atEnd() && this.src[this.#i] !== "|" && this.src[this.#i] !== ")") {
      const term = this.quantified(this.atom());
      reach = Math.max(reach, len + term.reach);
      back = Math.max(back, term.back); // a later term starts no earlier
      len += term.len;
    }
    return { len, reach, back };
  }

  /** Applies the quantifier after an atom, if any. */
  quantified(atom: Extent): Extent {
    const c = this.src[this.#i];
    let max: number;
    if (c === "*" || c === "+") throw new Unbounded();
    if (c === "?") {
      this.#i++;
      max = 1;
    } else if (c === "{") {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(this.src.slice(this.#i));
      if (m === null) return atom; // a literal "{" (outside u mode), already taken as an atom
      if (m[2] !== undefined && m[3] === "") throw new Unbounded();
      this.#i += m[0].length;
      max = Number(m[3] ?? m[1]);
      if (!Number.isSafeInteger(max)) throw new Unbounded();
    } else {
      return atom;
    }
    if (this.src[this.#i] === "?") this.#i++; // lazy: the same bounds
    if (max === 0) return { len: 0, reach: 0, back: 0 };
    return { len: max * atom.len, reach: (max - 1) * atom.len + atom.reach, back: atom.back };
  }

  atom(): Extent {
    const src = this.src;
    const c = src[this.#i++]!;
    switch (c) {
      case "^":
        return { len: 0, reach: 0, back: 1 };
      case "$":
        return { len: 0, reach: 1, back: 0 };
      case "(":
        return this.group();
      case "[":
        this.#class();
        return CHAR;
      case "\\":
        return this.#escape();
      case "*":
      case "+":
      case "?":
        throw new Unbounded(); // a quantifier with nothing before it: not a pattern this parser knows
      case "{":
        if (this.unicode) throw new Unbounded();
        return CHAR;
      default:
        return CHAR;
    }
  }

  /** After `(`: a group or an assertion, through its `)`. */
  group(): Extent {
    const src = this.src;
    let kind: "capture" | "ahead" | "behind" = "capture";
    if (src[this.#i] === "?") {
      const head = src.slice(this.#i, this.#i + 3);
      if (head.startsWith("?:")) this.#i += 2;
      else if (head.startsWith("?=") || head.startsWith("?!")) {
        this.#i += 2;
        kind = "ahead";
      } else if (head === "?<=" || head === "?<!") {
        this.#i += 3;
        kind = "behind";
      } else if (head.startsWith("?<")) {
        const close = src.indexOf(">", this.#i);
        if (close === -1) throw new Unbounded();
        this.#i = close + 1;
      } else {
        throw new Unbounded(); // modifiers or anything newer: not bounded here
      }
    }
    const inner = this.alternation();
    if (src[this.#i] !== ")") throw new Unbounded();
    this.#i++;
    if (kind === "capture") return inner;
    if (kind === "ahead") return { len: 0, reach: inner.reach, back: inner.back };
    // A lookbehind matches what stands before it, and what it holds may look
    // further back; a lookahead inside it reads no further than its reach,
    // taken as if forward.
    return { len: 0, reach: inner.reach, back: inner.len + inner.back };
  }

  /** After `[`: skips the class through its `]`. */
  #class(): void {
    const src = this.src;
    if (src[this.#i] === "^") this.#i++;
    // Outside u mode a "]" right at the start is a literal in some engines; not in JavaScript ([] matches nothing).
    while (this.#i < src.length && src[this.#i] !== "]") {
      if (src[this.#i] === "\\") this.#i++;
      this.#i++;
    }
    if (this.#i >= src.length) throw new Unbounded();
    this.#i++;
  }

  /** After `\`: one character, an assertion, or (backreferences) unbounded. */
  #escape(): Extent {
    const src = this.src;
    const c = src[this.#i++];
    if (c === undefined) throw new Unbounded();
    if (c === "b" || c === "B") return { len: 0, reach: 1, back: 1 };
    if (c >= "1" && c <= "9") throw new Unbounded();
    if (c === "k" && src[this.#i] === "<") throw new Unbounded();
    // \u{…} and \p{…} only in u mode; elsewhere the "{" is a quantifier of the letter.
    if (this.unicode && (c === "u" || c === "p" || c === "P") && src[this.#i] === "{") {
      const close = src.indexOf("}", this.#i);
      if (close === -1) throw new Unbounded();
      this.#i = close + 1;
    } else if (c === "u" && /^[0-9A-Fa-f]{4}/.test(src.slice(this.#i, this.#i + 4))) {
      this.#i += 4;
    } else if (c === "x" && /^[0-9A-Fa-f]{2}/.test(src.slice(this.#i, this.#i + 2))) {
      this.#i += 2;
    } else if (c === "c") {
      // Without a control letter (outside u mode) it stands for two characters, "\\" and "c".
      if (!/^[A-Za-z]/.test(src[this.#i] ?? "")) throw new Unbounded();
      this.#i++;
    }
    return CHAR;
  }
}
