"""Leftmost-longest matching of many byte patterns: one Aho-Corasick automaton (pyahocorasick, in C)
over the patterns' first `KEY_LEN` bytes, and the longest whole pattern found where a key occurs.

Every pattern is indexed by its first `KEY_LEN` bytes (its "key"; a shorter pattern is its own key).
The cost per input byte does not depend on the number of patterns (the automaton is built in about a
second for `MAX_VALUES` secrets). At each occurrence of a key the longest pattern of that key present
at that position is found among the key's patterns, kept sorted (a bisection in the usual case, a few
more when they share longer prefixes). A run of many overlapping key occurrences, like "aaaa…" for the
secret "aaaa", costs a little Python per byte.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import islice

import ahocorasick  # type: ignore[import-not-found]  # C extension without stubs

__all__ = ["HEX_KEY_LEN", "KEY_LEN", "Matcher"]

KEY_LEN = 6  # bytes: the automaton's key is a pattern's first KEY_LEN bytes; longer patterns are
# checked whole where their key occurs. Shorter keys build faster and match at about the same speed,
# but occur by chance more often (each occurrence costs a little Python). Measured at 10,000 random
# 20-40 character secrets (~150,000 squeezed-view patterns): keys of 5 bytes build in 0.4 s, 6 in
# 0.55 s, 8 in 0.95 s; matching 64 KiB of base64 costs ~5 ms with any of them. (Earlier, at 80,000
# secrets: 8-byte keys gave 2.2 M automaton nodes, 16 bytes 6.5 M, whole patterns 22 M and 1.1 GiB.)
HEX_KEY_LEN = 10  # hex digits: the hex view's keys (16 symbols: 10 digits carry what 5 bytes do)


def latin1(data: bytes) -> str:
    # the automaton works on str: latin-1 maps each byte to the code point of the same value
    return data.decode("latin-1")


def _longest_at(buf: bytes, start: int, klen: int, patterns: list[bytes], longest: int) -> int:
    """End of the longest of `patterns` (sorted, all starting with the same `klen`-byte key, which
    `buf` has at `start`) that occurs at `buf[start:]`; -1 if none does."""
    if len(patterns) == 1:
        p = patterns[0]
        return start + len(p) if buf.startswith(p, start) else -1
    q = buf[start : start + longest]
    while True:
        # the greatest pattern <= q: if it is a prefix of q it is the longest one; otherwise no
        # pattern longer than the common prefix of the two is a prefix of q (it would sort between)
        i = bisect_right(patterns, q) - 1
        if i < 0:
            return -1
        c = patterns[i]
        if q.startswith(c):
            return start + len(c)
        lo, hi = klen, min(len(c), len(q)) - 1  # c[:lo] == q[:lo]; they differ before min length
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if c[:mid] == q[:mid]:
                lo = mid
            else:
                hi = mid - 1
        q = q[:lo]


class Matcher:
    """The patterns of one view (pattern -> replacement). Immutable, thread-safe."""

    def __init__(self, table: dict[bytes, bytes], key_len: int = KEY_LEN) -> None:
        self.table = table
        self.key_len = key_len
        self.max_len = max(map(len, table), default=0)
        groups: dict[bytes, list[bytes]] = {}
        for p in table:
            groups.setdefault(p[:key_len], []).append(p)
        self.key_max = max(map(len, groups), default=0)
        self._auto: ahocorasick.Automaton | None = None
        if groups:
            auto = ahocorasick.Automaton()
            for key, patterns in groups.items():
                patterns.sort()
                auto.add_word(latin1(key), (len(key), patterns, max(map(len, patterns))))
            auto.make_automaton()
            self._auto = auto

    def __bool__(self) -> bool:
        return bool(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def _proper_prefix(self, tail: bytes) -> bool:
        """Whether `tail` (at most `key_len` bytes) is a proper prefix of some pattern."""
        auto, text = self._auto, latin1(tail)
        if auto is None or not auto.match(text):  # not even a prefix of a key
            return False
        entry = auto.get(text, None)
        if entry is None:  # a proper prefix of a key
            return True
        if entry[2] > len(tail):  # the key of a longer pattern
            return True
        return next(islice(auto.keys(text), 1, None), None) is not None  # a prefix of another key

    def undecided(self, buf: bytes, keep: int | None = None) -> int:
        """Length of the longest tail of `buf` (at most `keep` bytes, by default the longest pattern
        less one) that is a proper prefix of a pattern: only those bytes may still be part of a match
        that more input completes.

        Cost: an automaton pass over the last `keep` bytes (tails longer than a key start with a whole
        key) and at most `KEY_LEN` look-ups of short tails: no quadratic slicing.
        """
        if keep is None:
            keep = self.max_len - 1
        n, auto = len(buf), self._auto
        if auto is None or keep <= 0 or n == 0:
            return 0
        lo = max(0, n - keep)
        key_len = self.key_len
        if n - lo > key_len and self.max_len > key_len + 1:
            for last, (klen, patterns, longest) in auto.iter(latin1(buf[lo:])):
                if klen < key_len:
                    continue
                start: int = lo + last - klen + 1  # whole keys of one length: in increasing order of start
                size = n - start
                if size <= key_len:
                    break
                if longest > size:
                    tail = buf[start:]
                    i = bisect_right(patterns, tail)  # patterns extending `tail` sort right after it
                    if i < len(patterns) and patterns[i].startswith(tail):
                        return size
        for k in range(min(keep, n, self.key_max), 0, -1):
            if self._proper_prefix(buf[n - k :]):
                return k
        return 0

    def stops(self, buf: bytes, limit: int, lo: int = 0) -> dict[int, int]:
        """start -> end of the longest pattern at each start in [lo, limit) where one occurs.

        Every pattern starting before `limit` must fit in `buf` (the caller holds back the undecided
        tail). The automaton runs only as far as a key starting before `limit` can reach.
        """
        stops: dict[int, int] = {}
        auto = self._auto
        if auto is None or limit <= lo:
            return stops
        end = min(len(buf), limit + self.key_max - 1)
        for last, (klen, patterns, longest) in auto.iter(latin1(buf[lo:end])):
            start = lo + last - klen + 1
            if start >= limit:
                continue
            stop = _longest_at(buf, start, klen, patterns, longest)
            if stop > stops.get(start, -1):
                stops[start] = stop
        return stops
