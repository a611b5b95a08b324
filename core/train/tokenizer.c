#include "tessera/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "internal.h"

/* ---- a hash map from 64-bit keys to 64-bit values (open addressing) ---- */

typedef struct u64map {
    uint64_t *keys; /* key + 1; 0 marks an empty slot */
    int64_t *vals;
    size_t cap, n;
} u64map;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int map_init(u64map *m, size_t cap)
{
    size_t c = 16;
    while (c < cap * 2) c *= 2;
    m->keys = calloc(c, sizeof *m->keys);
    m->vals = calloc(c, sizeof *m->vals);
    m->cap = c, m->n = 0;
    return m->keys && m->vals ? 0 : -1;
}

static void map_free(u64map *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int64_t *map_slot(u64map *m, uint64_t key, int insert);

static int map_grow(u64map *m)
{
    u64map bigger;
    if (map_init(&bigger, m->cap) != 0) return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) *map_slot(&bigger, m->keys[i] - 1, 1) = m->vals[i];
    map_free(m);
    *m = bigger;
    return 0;
}

/* The value slot for key, inserted (as 0) if `insert`; NULL if absent or
 * out of memory. */
static int64_t *map_slot(u64map *m, uint64_t key, int insert)
{
    if (insert && (m->n + 1) * 2 > m->cap && map_grow(m) != 0) return NULL;
    size_t i = mix(key) & (m->cap - 1);
    while (m->keys[i]) {
        if (m->keys[i] == key + 1) return &m->vals[i];
        i = (i + 1) & (m->cap - 1);
    }
    if (!insert) return NULL;
    m->keys[i] = key + 1;
    m->vals[i] = 0;
    m->n++;
    return &m->vals[i];
}

struct ts_merge_table {
    u64map rank; /* (a << 32 | b) -> merge index */
    u64map word; /* hash of a word's bytes (+1 per collision) -> its id + 1 */
};

static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

/* ---- construction ---- */

void ts_tokenizer_free(ts_tokenizer *t)
{
    if (t->bytes)
        for (int32_t i = 0; i < t->vocab_size; i++) free(t->bytes[i]);
    free(t->bytes);
    free(t->len);
    free(t->merges);
    if (t->table) map_free(&t->table->rank), map_free(&t->table->word);
    free(t->table);
    memset(t, 0, sizeof *t);
}

/* Tokens are at most this long: chunks are cut there, and a tokenizer file
 * whose merges build longer tokens is refused (else merges that double a
 * token's length each time would make a few hundred bytes of file ask for
 * gigabytes). */
enum { MAX_TOKEN_BYTES = 256 };

static uint64_t hash_bytes(const uint8_t *p, size_t n);

/* The slot of a word's id + 1 in the word table (0: not there); NULL when
 * inserting finds no memory. Hash collisions probe the next hash value. */
static int64_t *word_slot(const ts_tokenizer *t, const uint8_t *p, size_t n, int insert)
{
    for (uint64_t h = hash_bytes(p, n);; h++) {
        int64_t *slot = map_slot(&t->table->word, h, insert);
        if (!slot || *slot == 0) return slot;
        int32_t id = (int32_t)(*slot - 1);
        if ((size_t)t->len[id] == n && !memcmp(t->bytes[id], p, n)) return slot;
    }
}

/* Token byte strings, the merge and word tables and the fingerprint from
 * the merges, or from the n_words words (whose byte strings and lengths
 * `words`/`wlen` hand over; freed here either way). */
static ts_status finish(ts_tokenizer *t, uint8_t **words, const int32_t *wlen)
{
    t->vocab_size = 256 + t->n_merges + t->n_words;
    t->bytes = calloc((size_t)t->vocab_size, sizeof *t->bytes);
    t->len = calloc((size_t)t->vocab_size, sizeof *t->len);
    t->table = calloc(1, sizeof *t->table);
    int ok = t->bytes && t->len && t->table && map_init(&t->table->rank, (size_t)t->n_merges + 1) == 0 &&
             map_init(&t->table->word, (size_t)t->n_words + 1) == 0;
    for (int32_t i = 0; i < t->n_words; i++) {
        if (ok) t->bytes[256 + i] = words[i], t->len[256 + i] = wlen[i];
        else free(words[i]);
    }
    if (!ok) return ts_error(TS_ERR_OOM, "no memory for a tokenizer");
    for (int i = 0; i < 256; i++) {
        t->bytes[i] = malloc(1);
        if (!t->bytes[i]) return ts_error(TS_ERR_OOM, "no memory for a tokenizer");
        t->bytes[i][0] = (uint8_t)i;
        t->len[i] = 1;
    }
    uint64_t fp = 1469598103934665603ull ^ (uint64_t)t->kind;
    for (int32_t i = 0; i < t->n_merges; i++) {
        int32_t a = t->merges[i][0], b = t->merges[i][1], id = 256 + i;
        if (a < 0 || b < 0 || a >= id || b >= id)
            return ts_error(TS_ERR_FORMAT, "merge %d refers to token %d/%d that does not exist yet", i, a, b);
        if (t->len[a] + t->len[b] > MAX_TOKEN_BYTES)
            return ts_error(TS_ERR_FORMAT, "merge %d makes a token of %d bytes (at most %d)", i, t->len[a] + t->len[b],
                            MAX_TOKEN_BYTES);
        t->len[id] = t->len[a] + t->len[b];
        t->bytes[id] = malloc((size_t)t->len[id]);
        if (!t->bytes[id]) return ts_error(TS_ERR_OOM, "no memory for a tokenizer");
        memcpy(t->bytes[id], t->bytes[a], (size_t)t->len[a]);
        memcpy(t->bytes[id] + t->len[a], t->bytes[b], (size_t)t->len[b]);
        int64_t *slot = map_slot(&t->table->rank, pair_key(a, b), 1);
        if (!slot) return ts_error(TS_ERR_OOM, "no memory for a tokenizer");
        if (*slot == 0) *slot = i + 1; /* first merge of a pair wins */
        fp = (fp ^ pair_key(a, b)) * 1099511628211ull;
    }
    for (int32_t i = 0; i < t->n_words; i++) {
        int32_t id = 256 + i;
        if (t->len[id] < 2 || t->len[id] > MAX_TOKEN_BYTES)
            return ts_error(TS_ERR_FORMAT, "word %d has %d bytes (2 to %d)", i, t->len[id], MAX_TOKEN_BYTES);
        int64_t *slot = word_slot(t, t->bytes[id], (size_t)t->len[id], 1);
        if (!slot) return ts_error(TS_ERR_OOM, "no memory for a tokenizer");
        if (*slot) return ts_error(TS_ERR_FORMAT, "word %d repeats word %d", i, (int)(*slot - 257));
        *slot = id + 1;
        fp = (fp ^ hash_bytes(t->bytes[id], (size_t)t->len[id])) * 1099511628211ull;
    }
    t->fingerprint = mix(fp ^ (uint64_t)t->n_merges ^ (uint64_t)t->n_words << 32);
    return TS_OK;
}

ts_status ts_tokenizer_init_byte(ts_tokenizer *t)
{
    memset(t, 0, sizeof *t);
    t->kind = TS_TOKENIZER_BYTE;
    ts_status st = finish(t, NULL, NULL);
    if (st) ts_tokenizer_free(t);
    return st;
}

/* ---- pre-tokenization: GPT-2-like chunks ---- */

enum { CLS_SPACE, CLS_LETTER, CLS_DIGIT, CLS_OTHER };

static int cls(uint8_t c)
{
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') return CLS_SPACE;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return CLS_LETTER;
    if (c >= '0' && c <= '9') return CLS_DIGIT;
    return CLS_OTHER;
}

/* Length of the chunk starting at text[i]. */
static size_t chunk_len(const uint8_t *s, size_t n, size_t i)
{
    if (n - i > MAX_TOKEN_BYTES) n = i + MAX_TOKEN_BYTES;
    size_t j = i;
    if (s[j] == ' ' && j + 1 < n && cls(s[j + 1]) != CLS_SPACE) j++; /* " word" */
    int c = cls(s[j]);
    if (c == CLS_SPACE) {
        /* whitespace run, leaving a last space to lead the next word */
        while (j < n && cls(s[j]) == CLS_SPACE) {
            if (s[j] == ' ' && j + 1 < n && cls(s[j + 1]) != CLS_SPACE && j > i) break;
            j++;
        }
        return j - i;
    }
    while (j < n && cls(s[j]) == c) j++;
    return j - i;
}

/* ---- training ---- */

typedef struct word {
    int32_t *ids;
    int32_t len;
    int64_t count;
} word;

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Length of the word-tokenizer run starting at text[i]: letters, digits or
 * other symbols, or one whitespace byte. */
static size_t word_run_len(const uint8_t *s, size_t n, size_t i)
{
    if (n - i > MAX_TOKEN_BYTES) n = i + MAX_TOKEN_BYTES;
    int c = cls(s[i]);
    if (c == CLS_SPACE) return 1;
    size_t j = i + 1;
    while (j < n && cls(s[j]) == c) j++;
    return j - i;
}

typedef struct run_count {
    const uint8_t *at; /* the first occurrence in the text */
    size_t len;
    int64_t count;
} run_count;

/* Every distinct unit of text (unit_len cuts them) of at least min_len
 * bytes, with how often it occurs, in order of first occurrence. */
static ts_status count_runs(const uint8_t *text, size_t n, size_t (*unit_len)(const uint8_t *, size_t, size_t),
                            size_t min_len, run_count **out, size_t *count)
{
    u64map index; /* hash of a run (+1 per collision) -> its index in runs + 1 */
    run_count *runs = NULL;
    size_t nruns = 0, cap = 0;
    ts_status st = TS_OK;
    if (map_init(&index, 1 << 12) != 0) return ts_error(TS_ERR_OOM, "no memory");
    for (size_t i = 0; i < n && !st;) {
        size_t len = unit_len(text, n, i);
        if (len >= min_len) {
            int64_t *slot = NULL;
            for (uint64_t h = hash_bytes(text + i, len);; h++) {
                slot = map_slot(&index, h, 1);
                if (!slot || *slot == 0) break;
                const run_count *r = &runs[*slot - 1];
                if (r->len == len && !memcmp(r->at, text + i, len)) break;
            }
            if (!slot) {
                st = ts_error(TS_ERR_OOM, "no memory");
                break;
            }
            if (*slot == 0) {
                if (nruns == cap) { /* doubled when full, from 1024 */
                    size_t c = cap ? 2 * cap : 1024;
                    run_count *r = realloc(runs, c * sizeof *r);
                    if (!r) {
                        st = ts_error(TS_ERR_OOM, "no memory");
                        break;
                    }
                    runs = r, cap = c;
                }
                runs[nruns] = (run_count){.at = text + i, .len = len, .count = 0};
                *slot = (int64_t)++nruns;
            }
            runs[*slot - 1].count++;
        }
        i += len;
    }
    map_free(&index);
    if (st) {
        free(runs);
        return st;
    }
    *out = runs, *count = nruns;
    return TS_OK;
}

ts_status ts_tokenizer_train_bpe(ts_tokenizer *t, const uint8_t *text, size_t n, int32_t vocab_size)
{
    memset(t, 0, sizeof *t);
    if (vocab_size < 256 || vocab_size > (1 << 20))
        return ts_error(TS_ERR_INVALID_ARG, "BPE vocabulary size %d must be in [256, 2^20]", vocab_size);
    /* unique chunks with counts, each as its byte tokens */
    run_count *runs = NULL;
    size_t nwords = 0;
    ts_status st = count_runs(text, n, chunk_len, 1, &runs, &nwords);
    if (st) return st;
    word *words = calloc(nwords ? nwords : 1, sizeof *words);
    if (!words) st = ts_error(TS_ERR_OOM, "no memory");
    for (size_t w = 0; w < nwords && !st; w++) {
        words[w].ids = malloc(runs[w].len * sizeof *words[w].ids);
        if (!words[w].ids) {
            st = ts_error(TS_ERR_OOM, "no memory");
            break;
        }
        for (size_t k = 0; k < runs[w].len; k++) words[w].ids[k] = runs[w].at[k];
        words[w].len = (int32_t)runs[w].len;
        words[w].count = runs[w].count;
    }
    free(runs);
    int32_t want = vocab_size - 256;
    t->kind = TS_TOKENIZER_BPE;
    t->merges = calloc((size_t)(want ? want : 1), sizeof *t->merges);
    if (!t->merges && !st) st = ts_error(TS_ERR_OOM, "no memory");
    u64map pairs = {0};
    if (!st && map_init(&pairs, 1 << 16) != 0) st = ts_error(TS_ERR_OOM, "no memory");
    while (!st && t->n_merges < want) {
        /* count adjacent pairs */
        memset(pairs.keys, 0, pairs.cap * sizeof *pairs.keys);
        pairs.n = 0;
        uint64_t best = 0;
        int64_t best_count = 0;
        for (size_t w = 0; w < nwords && !st; w++) {
            for (int32_t k = 0; k + 1 < words[w].len; k++) {
                uint64_t key = pair_key(words[w].ids[k], words[w].ids[k + 1]);
                int64_t *c = map_slot(&pairs, key, 1);
                if (!c) {
                    st = ts_error(TS_ERR_OOM, "no memory");
                    break;
                }
                *c += words[w].count;
                if (*c > best_count || (*c == best_count && key < best)) best = key, best_count = *c;
            }
        }
        if (st || best_count < 2) break;
        int32_t a = (int32_t)(best >> 32), b = (int32_t)(best & 0xffffffffu);
        int32_t id = 256 + t->n_merges;
        t->merges[t->n_merges][0] = a;
        t->merges[t->n_merges][1] = b;
        t->n_merges++;
        for (size_t w = 0; w < nwords; w++) { /* apply the merge */
            int32_t *ids = words[w].ids, out = 0;
            for (int32_t k = 0; k < words[w].len; k++) {
                if (k + 1 < words[w].len && ids[k] == a && ids[k + 1] == b) {
                    ids[out++] = id;
                    k++;
                } else {
                    ids[out++] = ids[k];
                }
            }
            words[w].len = out;
        }
    }
    map_free(&pairs);
    for (size_t w = 0; words && w < nwords; w++) free(words[w].ids);
    free(words);
    if (!st) st = finish(t, NULL, NULL);
    if (st) ts_tokenizer_free(t);
    return st;
}

/* The most frequent first; ties in byte order (then the shorter first). */
static int by_count(const void *pa, const void *pb)
{
    const run_count *a = pa, *b = pb;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    size_t m = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->at, b->at, m);
    if (c) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

ts_status ts_tokenizer_train_words(ts_tokenizer *t, const uint8_t *text, size_t n, int32_t vocab_size)
{
    memset(t, 0, sizeof *t);
    if (vocab_size < 256 || vocab_size > (1 << 20))
        return ts_error(TS_ERR_INVALID_ARG, "word vocabulary size %d must be in [256, 2^20]", vocab_size);
    run_count *runs = NULL;
    size_t nruns = 0;
    ts_status st = count_runs(text, n, word_run_len, 2, &runs, &nruns); /* single bytes are tokens already */
    if (st) return st;
    if (!st && nruns) qsort(runs, nruns, sizeof *runs, by_count);
    size_t want = 0;
    while (want < nruns && want < (size_t)(vocab_size - 256) && runs[want].count >= 2) want++;
    uint8_t **words = calloc(want ? want : 1, sizeof *words);
    int32_t *wlen = calloc(want ? want : 1, sizeof *wlen);
    if (!st && (!words || !wlen)) st = ts_error(TS_ERR_OOM, "no memory");
    for (size_t w = 0; w < want && !st; w++) {
        words[w] = malloc(runs[w].len);
        if (!words[w]) {
            st = ts_error(TS_ERR_OOM, "no memory");
            break;
        }
        memcpy(words[w], runs[w].at, runs[w].len);
        wlen[w] = (int32_t)runs[w].len;
        t->n_words = (int32_t)w + 1;
    }
    free(runs);
    t->kind = TS_TOKENIZER_WORD;
    if (!st) st = finish(t, words, wlen);
    else
        for (int32_t w = 0; w < t->n_words; w++) free(words[w]);
    free(words);
    free(wlen);
    if (st) ts_tokenizer_free(t);
    return st;
}

/* ---- files ---- */

ts_status ts_tokenizer_serialize(const ts_tokenizer *t, char **text, size_t *len)
{
    size_t cap = 160 + (size_t)t->n_merges * 24, n = 0;
    for (int32_t i = 0; i < t->n_words; i++) cap += 2 * (size_t)t->len[256 + i] + 1;
    char *buf = malloc(cap);
    *text = NULL, *len = 0;
    if (!buf) return ts_error(TS_ERR_OOM, "no memory");
    static const char *const names[] = {"byte", "bpe", "word"};
    n += (size_t)snprintf(buf + n, cap - n, "tessera-tokenizer 1\ntype %s\nvocab_size %d\nmerges %d\n",
                          names[t->kind], t->vocab_size, t->n_merges);
    for (int32_t i = 0; i < t->n_merges; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%d %d\n", t->merges[i][0], t->merges[i][1]);
    if (t->kind == TS_TOKENIZER_WORD) {
        n += (size_t)snprintf(buf + n, cap - n, "words %d\n", t->n_words);
        static const char hex[] = "0123456789abcdef";
        for (int32_t i = 0; i < t->n_words; i++) {
            const uint8_t *w = t->bytes[256 + i];
            for (int32_t k = 0; k < t->len[256 + i]; k++) buf[n++] = hex[w[k] >> 4], buf[n++] = hex[w[k] & 15];
            buf[n++] = '\n';
        }
    }
    *text = buf, *len = n;
    return TS_OK;
}

ts_status ts_tokenizer_save(const ts_tokenizer *t, const char *path)
{
    char *buf;
    size_t n;
    TRY(ts_tokenizer_serialize(t, &buf, &n));
    ts_status st = ts_write_file_atomic(path, buf, n);
    free(buf);
    return st;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A word tokenizer's "words W" line and W lines of hex bytes from p; *at is
 * where they end. W must make vocab tokens with the 256 bytes. */
static ts_status read_words(const char *p, const char *end, int vocab, uint8_t ***words, int32_t **wlen,
                            int32_t *count, const char **at)
{
    long w = -1;
    if (end - p > 6 && !memcmp(p, "words ", 6) && p[6] >= '0' && p[6] <= '9') {
        char *q;
        errno = 0;
        w = strtol(p + 6, &q, 10);
        if (errno || q >= end || *q != '\n') w = -1;
        else p = q + 1;
    }
    if (w < 0 || w > (1 << 20) || vocab != 256 + w)
        return ts_error(TS_ERR_FORMAT, "no \"words W\" line with vocab_size %d = 256 + W", vocab);
    *words = calloc((size_t)(w ? w : 1), sizeof **words);
    *wlen = calloc((size_t)(w ? w : 1), sizeof **wlen);
    *count = 0;
    if (!*words || !*wlen) return ts_error(TS_ERR_OOM, "no memory");
    for (long i = 0; i < w; i++) {
        const char *e = p;
        while (e < end && *e != '\n') e++;
        size_t digits = (size_t)(e - p);
        int ok = e < end && digits >= 4 && digits % 2 == 0 && digits / 2 <= MAX_TOKEN_BYTES;
        uint8_t *b = ok ? malloc(digits / 2) : NULL;
        for (size_t k = 0; b && k < digits / 2 && ok; k++) {
            int hi = hex_digit(p[2 * k]), lo = hex_digit(p[2 * k + 1]);
            ok = hi >= 0 && lo >= 0;
            if (ok) b[k] = (uint8_t)(hi << 4 | lo); /* only after the check: -1 << 4 is undefined */
        }
        if (!ok || !b) {
            free(b);
            for (int32_t k = 0; k < *count; k++) free((*words)[k]);
            free(*words), free(*wlen);
            *words = NULL, *wlen = NULL, *count = 0;
            return ok ? ts_error(TS_ERR_OOM, "no memory")
                      : ts_error(TS_ERR_FORMAT, "word %ld of %ld is missing or not 2 to %d bytes in hex (truncated?)",
                                 i, w, MAX_TOKEN_BYTES);
        }
        (*words)[i] = b, (*wlen)[i] = (int32_t)(digits / 2), *count = (int32_t)i + 1;
        p = e + 1;
    }
    *at = p;
    return TS_OK;
}

ts_status ts_tokenizer_load(ts_tokenizer *t, const char *path)
{
    memset(t, 0, sizeof *t);
    char *text;
    size_t n;
    ts_status st = ts_read_file(path, &text, &n);
    if (st) return st;
    char type[16] = "";
    int version = 0, vocab = 0, merges = 0, used = 0;
    if (sscanf(text, "tessera-tokenizer %d\ntype %15s\nvocab_size %d\nmerges %d\n%n", &version, type,
               &vocab, &merges, &used) != 4 ||
        version != 1) {
        free(text);
        return ts_error(TS_ERR_FORMAT, "%s is not a tessera tokenizer file", path);
    }
    int is_word = !strcmp(type, "word");
    if (strcmp(type, "byte") && strcmp(type, "bpe") && !is_word) {
        free(text);
        return ts_error(TS_ERR_FORMAT, "%s: unknown tokenizer type '%s'", path, type);
    }
    if (merges < 0 || merges > (1 << 20) || (!is_word && vocab != 256 + merges) ||
        (strcmp(type, "bpe") && merges != 0)) {
        free(text);
        return ts_error(TS_ERR_FORMAT, "%s: vocab_size %d does not match %d merges", path, vocab, merges);
    }
    t->kind = is_word ? TS_TOKENIZER_WORD : strcmp(type, "bpe") ? TS_TOKENIZER_BYTE : TS_TOKENIZER_BPE;
    t->merges = calloc((size_t)(merges ? merges : 1), sizeof *t->merges);
    if (!t->merges) {
        free(text);
        return ts_error(TS_ERR_OOM, "no memory");
    }
    /* "a b\n" per merge, parsed in one pass (sscanf would measure the rest of
     * the text at every call: quadratic in the file) */
    const char *p = text + used, *end = text + n;
    for (int i = 0; i < merges; i++) {
        long v[2];
        int ok = 1;
        for (int k = 0; k < 2 && ok; k++) {
            while (p < end && *p == ' ') p++;
            char *q;
            errno = 0;
            v[k] = p < end && *p >= '0' && *p <= '9' ? strtol(p, &q, 10) : -1;
            ok = v[k] >= 0 && v[k] < (1 << 21) && errno == 0;
            if (ok) p = q;
        }
        if (ok && p < end && *p == '\n') p++;
        else ok = 0;
        if (!ok) {
            free(text);
            ts_tokenizer_free(t);
            return ts_error(TS_ERR_FORMAT, "%s: merge %d of %d is missing or malformed (truncated?)",
                            path, i, merges);
        }
        t->merges[i][0] = (int32_t)v[0], t->merges[i][1] = (int32_t)v[1];
    }
    t->n_merges = merges;
    uint8_t **words = NULL;
    int32_t *wlen = NULL;
    if (is_word) {
        st = read_words(p, end, vocab, &words, &wlen, &t->n_words, &p);
        if (st) {
            free(text);
            ts_tokenizer_free(t);
            return ts_error_context(st, "%s", path);
        }
    }
    while (p < end && (*p == ' ' || *p == '\n')) p++;
    if ((size_t)(p - text) != n) {
        for (int32_t i = 0; i < t->n_words; i++) free(words[i]);
        free(words), free(wlen), free(text);
        ts_tokenizer_free(t);
        return ts_error(TS_ERR_FORMAT, "%s: unexpected data after the %s", path, is_word ? "words" : "merges");
    }
    free(text);
    st = finish(t, words, wlen);
    free(words), free(wlen);
    if (st) {
        st = ts_error_context(st, "%s", path);
        ts_tokenizer_free(t);
    }
    return st;
}

int ts_tokenizer_spec_is_file(const char *spec)
{
    return strcmp(spec, "byte") != 0 && strncmp(spec, "bpe:", 4) != 0 && strncmp(spec, "word:", 5) != 0;
}

ts_status ts_tokenizer_from_spec(ts_tokenizer *t, const char *spec, const uint8_t *text, size_t n)
{
    memset(t, 0, sizeof *t);
    if (!strcmp(spec, "byte")) return ts_tokenizer_init_byte(t);
    if (ts_tokenizer_spec_is_file(spec)) return ts_tokenizer_load(t, spec);
    int word = spec[0] == 'w';
    const char *num = spec + (word ? 5 : 4);
    char *end;
    errno = 0;
    long v = strtol(num, &end, 10);
    if (errno || end == num || *end || v < 256 || v > (1 << 20))
        return ts_error(TS_ERR_INVALID_ARG, "tokenizer '%s': the vocabulary size after '%s' must be a number in "
                        "[256, 2^20]", spec, word ? "word:" : "bpe:");
    return word ? ts_tokenizer_train_words(t, text, n, (int32_t)v) : ts_tokenizer_train_bpe(t, text, n, (int32_t)v);
}

/* ---- encoding ---- */

static int32_t merge_rank(const ts_tokenizer *t, int32_t a, int32_t b)
{
    int64_t *r = map_slot(&t->table->rank, pair_key(a, b), 0);
    return r ? (int32_t)(*r - 1) : -1;
}

/* Apply merges in rank order to ids[0..len) in place; returns the new length. */
static int32_t bpe_chunk(const ts_tokenizer *t, int32_t *ids, int32_t len)
{
    for (;;) {
        int32_t best = -1;
        for (int32_t k = 0; k + 1 < len; k++) {
            int32_t r = merge_rank(t, ids[k], ids[k + 1]);
            if (r >= 0 && (best < 0 || r < best)) best = r;
        }
        if (best < 0) return len;
        int32_t a = t->merges[best][0], b = t->merges[best][1], out = 0;
        for (int32_t k = 0; k < len; k++) {
            if (k + 1 < len && ids[k] == a && ids[k + 1] == b) {
                ids[out++] = 256 + best;
                k++;
            } else {
                ids[out++] = ids[k];
            }
        }
        len = out;
    }
}

ts_status ts_tokenizer_encode(const ts_tokenizer *t, const uint8_t *text, size_t n, int32_t **ids,
                              size_t *count)
{
    int32_t *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) return ts_error(TS_ERR_OOM, "no memory to encode %zu bytes", n);
    size_t k = 0;
    if (t->kind == TS_TOKENIZER_WORD) {
        for (size_t i = 0; i < n;) {
            size_t len = word_run_len(text, n, i);
            int64_t *slot = len >= 2 ? word_slot(t, text + i, len, 0) : NULL;
            if (slot && *slot) out[k++] = (int32_t)(*slot - 1);
            else
                for (size_t j = 0; j < len; j++) out[k++] = text[i + j];
            i += len;
        }
    } else if (t->kind == TS_TOKENIZER_BYTE || t->n_merges == 0) {
        for (size_t i = 0; i < n; i++) out[i] = text[i];
        k = n;
    } else {
        /* cache of encoded chunks: content hash -> (offset into out, length) of a
         * previous occurrence */
        u64map cache;
        if (map_init(&cache, 1 << 12) != 0) {
            free(out);
            return ts_error(TS_ERR_OOM, "no memory");
        }
        for (size_t i = 0; i < n;) {
            size_t len = chunk_len(text, n, i);
            uint64_t h = hash_bytes(text + i, len) ^ ((uint64_t)len << 56);
            int64_t *slot = map_slot(&cache, h, 0);
            int hit = 0;
            if (slot) { /* verify: the cached tokens must decode to these bytes */
                size_t at = (size_t)(*slot >> 20), m = (size_t)(*slot & 0xfffff), bytes = 0;
                int same = 1;
                for (size_t j = 0; j < m && same; j++) {
                    int32_t id = out[at + j];
                    same = bytes + (size_t)t->len[id] <= len &&
                           !memcmp(t->bytes[id], text + i + bytes, (size_t)t->len[id]);
                    bytes += (size_t)t->len[id];
                }
                if (same && bytes == len) {
                    memmove(out + k, out + at, m * sizeof *out);
                    k += m;
                    hit = 1;
                }
            }
            if (!hit) {
                for (size_t j = 0; j < len; j++) out[k + j] = text[i + j];
                int32_t m = bpe_chunk(t, out + k, (int32_t)len);
                if (len < (1u << 20) && k < ((size_t)1 << 43)) {
                    int64_t *s = map_slot(&cache, h, 1);
                    if (s) *s = (int64_t)k << 20 | (int64_t)m;
                }
                k += (size_t)m;
            }
            i += len;
        }
        map_free(&cache);
    }
    *ids = out;
    *count = k;
    return TS_OK;
}

ts_status ts_tokenizer_units(const ts_tokenizer *t, const uint8_t *text, size_t n, const int32_t *ids,
                             size_t count, uint32_t *start, uint32_t *len)
{
    if (n > UINT32_MAX) return ts_error(TS_ERR_INVALID_ARG, "units of a text of %zu bytes (at most 4 GiB)", n);
    int chunks = t->kind == TS_TOKENIZER_BPE && t->n_merges > 0;
    size_t at = 0, unit = 0, unit_end = 0;
    for (size_t i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            return ts_error(TS_ERR_INVALID_ARG, "units: token %zu (%d) is outside the vocabulary", i, ids[i]);
        size_t m = (size_t)t->len[ids[i]];
        if (at == unit_end) { /* a token starts the next unit */
            if (at >= n) break;
            unit = at;
            unit_end = at + (chunks ? chunk_len(text, n, at) : word_run_len(text, n, at));
        }
        if (at + m > unit_end || memcmp(t->bytes[ids[i]], text + at, m) != 0) break;
        start[i] = (uint32_t)unit, len[i] = (uint32_t)(unit_end - unit);
        at += m;
        if (i + 1 == count && at == n) return TS_OK;
    }
    if (count == 0 && n == 0) return TS_OK;
    return ts_error(TS_ERR_INVALID_ARG, "units: the %zu tokens do not spell the %zu bytes of text", count, n);
}

int ts_char_ngrams(const uint8_t *unit, size_t len, int64_t buckets, int32_t *out, int max)
{
    size_t a = 0, b = len;
    while (a < b && cls(unit[a]) == CLS_SPACE) a++;
    while (b > a && cls(unit[b - 1]) == CLS_SPACE) b--;
    if (a == b) a = 0, b = len; /* all whitespace: the unit itself */
    uint8_t w[MAX_TOKEN_BYTES + 2];
    size_t m = 0;
    w[m++] = '<';
    for (size_t i = a; i < b && m < sizeof w - 1; i++)
        w[m++] = unit[i] >= 'A' && unit[i] <= 'Z' ? (uint8_t)(unit[i] - 'A' + 'a') : unit[i];
    w[m++] = '>';
    int k = 0;
    for (size_t i = 0; i + 2 <= m && k < max; i++) {
        uint32_t h = 2166136261u;
        for (size_t g = 0; g < 5 && i + g < m && k < max; g++) {
            h = (h ^ w[i + g]) * 16777619u;
            if (g >= 1) out[k++] = (int32_t)(h % (uint64_t)buckets);
        }
    }
    return k;
}

ts_status ts_tokenizer_decode(const ts_tokenizer *t, const int32_t *ids, size_t count, char **text,
                              size_t *len)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            return ts_error(TS_ERR_INVALID_ARG, "token %d at %zu is outside the vocabulary [0, %d)",
                            ids[i], i, t->vocab_size);
        n += (size_t)t->len[ids[i]];
    }
    char *out = malloc(n + 1);
    if (!out) return ts_error(TS_ERR_OOM, "no memory");
    size_t k = 0;
    for (size_t i = 0; i < count; i++) {
        memcpy(out + k, t->bytes[ids[i]], (size_t)t->len[ids[i]]);
        k += (size_t)t->len[ids[i]];
    }
    out[k] = '\0';
    *text = out;
    *len = k;
    return TS_OK;
}
