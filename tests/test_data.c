/* Data: tokenizers, token files, batches; and the file formats underneath
 * (JSON, safetensors). Damaged files must be rejected with clear errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "testutil.h"

static const char *sample_text =
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n"
    "All:\nWe know't, we know't.\n\nFirst Citizen:\nLet us kill him, and we'll have corn at our own price.\n"
    "Is't a verdict?\n\nAll:\nNo more talking on't; let it be done: away, away!\n\n"
    "Second Citizen:\nOne word, good citizens.\n\nFirst Citizen:\nWe are accounted poor citizens, the "
    "patricians good.\nWhat authority surfeits on would relieve us: if they\nwould yield us but the "
    "superfluity, while it were\nwholesome, we might guess they relieved us humanely;\n";

static char *tmpfile_path(const char *tag)
{
    char *p = malloc(128);
    snprintf(p, 128, "/tmp/tessera-%s-XXXXXX", tag);
    int fd = mkstemp(p);
    if (fd >= 0) close(fd);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

TEST(byte_tokenizer_round_trips_every_byte)
{
    ts_tokenizer t;
    REQUIRE_OK(ts_tokenizer_init_byte(&t));
    EXPECT(t.vocab_size == 256);
    unsigned char all[256];
    for (int i = 0; i < 256; i++) all[i] = (unsigned char)(255 - i);
    int32_t *ids;
    size_t n;
    REQUIRE_OK(ts_tokenizer_encode(&t, all, 256, &ids, &n));
    EXPECT(n == 256 && ids[0] == 255 && ids[255] == 0);
    char *back;
    size_t len;
    REQUIRE_OK(ts_tokenizer_decode(&t, ids, n, &back, &len));
    EXPECT(len == 256 && !memcmp(back, all, 256));
    int32_t bad = 256;
    EXPECT_STATUS(ts_tokenizer_decode(&t, &bad, 1, &back, &len), TS_ERR_INVALID_ARG);
    free(ids);
    free(back);
    ts_tokenizer_free(&t);
}

static char *corpus(size_t *n)
{
    /* tinyshakespeare when present, else the excerpt above */
    const char *root = getenv("TESSERA_SOURCE_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/../shared/data/tinyshakespeare.txt", root ? root : ".");
    FILE *f = fopen(path, "rb");
    if (f) {
        char *buf = malloc(200001);
        *n = fread(buf, 1, 200000, f);
        buf[*n] = '\0';
        fclose(f);
        return buf;
    }
    *n = strlen(sample_text);
    return strdup(sample_text);
}

TEST(bpe_compresses_round_trips_and_is_deterministic)
{
    size_t n;
    char *text = corpus(&n);
    ts_tokenizer a, b;
    REQUIRE_OK(ts_tokenizer_train_bpe(&a, (const uint8_t *)text, n, 512));
    REQUIRE_OK(ts_tokenizer_train_bpe(&b, (const uint8_t *)text, n, 512));
    EXPECT(a.vocab_size > 256 && a.vocab_size <= 512);
    EXPECT(a.fingerprint == b.fingerprint && a.n_merges == b.n_merges);
    EXPECT(!memcmp(a.merges, b.merges, (size_t)a.n_merges * sizeof *a.merges));
    int32_t *ids;
    size_t count;
    REQUIRE_OK(ts_tokenizer_encode(&a, (const uint8_t *)text, n, &ids, &count));
    EXPECTF(count * 10 < n * 7, "%zu bytes became %zu tokens: BPE should compress", n, count);
    char *back;
    size_t len;
    REQUIRE_OK(ts_tokenizer_decode(&a, ids, count, &back, &len));
    EXPECT(len == n && !memcmp(back, text, n));
    th_note("BPE-%d: %zu bytes -> %zu tokens (%.2f bytes per token)", a.vocab_size, n, count,
            (double)n / (double)count);
    /* merges never cross a word: no token holds a space after its first byte */
    for (int32_t id = 256; id < a.vocab_size; id++)
        for (int32_t k = 1; k < a.len[id]; k++)
            EXPECTF(a.bytes[id][k] != ' ', "token %d crosses a word boundary", id);
    free(ids), free(back);
    ts_tokenizer_free(&a), ts_tokenizer_free(&b);
    free(text);
}

TEST(bpe_round_trips_arbitrary_bytes)
{
    size_t n;
    char *text = corpus(&n);
    ts_tokenizer t;
    REQUIRE_OK(ts_tokenizer_train_bpe(&t, (const uint8_t *)text, n, 400));
    rng_t r;
    rng_seed(&r, 31);
    unsigned char junk[5000];
    for (int i = 0; i < 5000; i++) junk[i] = (unsigned char)(rng_next(&r) & 0xff);
    for (int i = 0; i < 5000; i += 7) junk[i] = ' ';
    int32_t *ids;
    size_t count;
    REQUIRE_OK(ts_tokenizer_encode(&t, junk, sizeof junk, &ids, &count));
    char *back;
    size_t len;
    REQUIRE_OK(ts_tokenizer_decode(&t, ids, count, &back, &len));
    EXPECT(len == sizeof junk && !memcmp(back, junk, sizeof junk));
    free(ids), free(back), free(text);
    ts_tokenizer_free(&t);
}

/* Each of these tokenizer files, written to path, fails to load as a format error. */
static void expect_tokenizer_files_refused(const char *path, const char *const *bad, size_t n)
{
    ts_tokenizer b;
    for (size_t i = 0; i < n; i++) {
        write_bytes(path, bad[i], strlen(bad[i]));
        ts_status st = ts_tokenizer_load(&b, path);
        EXPECTF(st == TS_ERR_FORMAT, "case %zu: %s (%s)", i, ts_status_name(st), ts_last_error());
    }
}

TEST(tokenizer_files_round_trip_and_damage_is_rejected)
{
    ts_tokenizer a, b;
    REQUIRE_OK(ts_tokenizer_train_bpe(&a, (const uint8_t *)sample_text, strlen(sample_text), 300));
    char *path = tmpfile_path("tok");
    REQUIRE_OK(ts_tokenizer_save(&a, path));
    REQUIRE_OK(ts_tokenizer_load(&b, path));
    EXPECT(b.vocab_size == a.vocab_size && b.fingerprint == a.fingerprint);
    int32_t *ia, *ib;
    size_t na, nb;
    REQUIRE_OK(ts_tokenizer_encode(&a, (const uint8_t *)sample_text, strlen(sample_text), &ia, &na));
    REQUIRE_OK(ts_tokenizer_encode(&b, (const uint8_t *)sample_text, strlen(sample_text), &ib, &nb));
    EXPECT(na == nb && !memcmp(ia, ib, na * sizeof *ia));
    free(ia), free(ib);
    ts_tokenizer_free(&b);
    static const char *bad[] = {
        "hello\n",
        "tessera-tokenizer 1\ntype bpe\nvocab_size 258\nmerges 2\n1 2\n",            /* truncated */
        "tessera-tokenizer 1\ntype bpe\nvocab_size 257\nmerges 1\n400 2\n",          /* unknown id */
        "tessera-tokenizer 1\ntype bpe\nvocab_size 300\nmerges 1\n1 2\n",            /* count mismatch */
        "tessera-tokenizer 1\ntype wordpiece\nvocab_size 256\nmerges 0\n",
        "tessera-tokenizer 1\ntype bpe\nvocab_size 257\nmerges 1\n1 2\ngarbage\n",
        "tessera-tokenizer 1\ntype bpe\nvocab_size 257\nmerges 1\n-1 2\n",           /* negative id */
        "tessera-tokenizer 1\ntype bpe\nvocab_size 257\nmerges 1\n99999999999999999999 2\n",
        /* merges that double a token each time: 2^k bytes after k merges */
        "tessera-tokenizer 1\ntype bpe\nvocab_size 268\nmerges 12\n97 97\n256 256\n257 257\n258 258\n"
        "259 259\n260 260\n261 261\n262 262\n263 263\n264 264\n265 265\n266 266\n",
    };
    expect_tokenizer_files_refused(path, bad, sizeof bad / sizeof *bad);
    unlink(path);
    free(path);
    ts_tokenizer_free(&a);
}

TEST(word_tokenizer_keeps_each_repeated_run_whole_and_round_trips)
{
    /* "data" is seen three times (twice after a space, once first): one token
     * either way; "Sonic" once: its bytes; "42" twice and "--" twice: tokens */
    const char *text = "data files for 42 games\n data -- files -- data 42 Sonic";
    ts_tokenizer a, b;
    REQUIRE_OK(ts_tokenizer_train_words(&a, (const uint8_t *)text, strlen(text), 1000));
    REQUIRE_OK(ts_tokenizer_train_words(&b, (const uint8_t *)text, strlen(text), 1000));
    EXPECT(a.kind == TS_TOKENIZER_WORD && a.n_merges == 0);
    EXPECTF(a.n_words == 4 && a.vocab_size == 260, "%d words, vocabulary %d", a.n_words, a.vocab_size);
    EXPECT(a.fingerprint == b.fingerprint);
    /* the most frequent first: "data" (3), then ties in byte order */
    EXPECT(a.len[256] == 4 && !memcmp(a.bytes[256], "data", 4));
    EXPECT(a.len[257] == 2 && !memcmp(a.bytes[257], "--", 2));
    EXPECT(a.len[258] == 2 && !memcmp(a.bytes[258], "42", 2));
    EXPECT(a.len[259] == 5 && !memcmp(a.bytes[259], "files", 5));
    const char *probe = "data, datas  Sonic";
    int32_t *ids;
    size_t count;
    REQUIRE_OK(ts_tokenizer_encode(&a, (const uint8_t *)probe, strlen(probe), &ids, &count));
    /* data , ' ' d a t a s ' ' ' ' S o n i c: "datas" is another run */
    int32_t want[] = {256, ',', ' ', 'd', 'a', 't', 'a', 's', ' ', ' ', 'S', 'o', 'n', 'i', 'c'};
    EXPECTF(count == sizeof want / sizeof *want && !memcmp(ids, want, sizeof want), "%zu tokens", count);
    free(ids);
    /* the vocabulary size caps the words; a tie cut keeps the byte order */
    ts_tokenizer_free(&b);
    REQUIRE_OK(ts_tokenizer_train_words(&b, (const uint8_t *)text, strlen(text), 258));
    EXPECT(b.n_words == 2 && b.fingerprint != a.fingerprint);
    ts_tokenizer_free(&b);
    /* any bytes round-trip */
    rng_t r;
    rng_seed(&r, 7);
    unsigned char junk[4000];
    for (int i = 0; i < 4000; i++) junk[i] = (unsigned char)(rng_next(&r) & 0xff);
    memcpy(junk + 100, " data files ", 12);
    REQUIRE_OK(ts_tokenizer_encode(&a, junk, sizeof junk, &ids, &count));
    char *back;
    size_t len;
    REQUIRE_OK(ts_tokenizer_decode(&a, ids, count, &back, &len));
    EXPECT(len == sizeof junk && !memcmp(back, junk, sizeof junk));
    free(ids), free(back);
    /* its file round-trips; damage is refused */
    char *path = tmpfile_path("wtok");
    REQUIRE_OK(ts_tokenizer_save(&a, path));
    REQUIRE_OK(ts_tokenizer_load(&b, path));
    EXPECT(b.kind == TS_TOKENIZER_WORD && b.vocab_size == a.vocab_size && b.fingerprint == a.fingerprint);
    for (int32_t id = 0; id < a.vocab_size; id++)
        EXPECTF(b.len[id] == a.len[id] && !memcmp(b.bytes[id], a.bytes[id], (size_t)a.len[id]), "token %d", id);
    ts_tokenizer_free(&b);
    static const char *bad[] = {
        "tessera-tokenizer 1\ntype word\nvocab_size 258\nmerges 0\nwords 2\n6461\n",       /* truncated */
        "tessera-tokenizer 1\ntype word\nvocab_size 259\nmerges 0\nwords 2\n6461\n6462\n", /* count mismatch */
        "tessera-tokenizer 1\ntype word\nvocab_size 257\nmerges 0\nwords 1\n64\n",         /* one byte */
        "tessera-tokenizer 1\ntype word\nvocab_size 257\nmerges 0\nwords 1\n6g61\n",       /* not hex */
        "tessera-tokenizer 1\ntype word\nvocab_size 257\nmerges 0\nwords 1\n646\n",        /* odd digits */
        "tessera-tokenizer 1\ntype word\nvocab_size 258\nmerges 0\nwords 2\n6461\n6461\n", /* repeated */
        "tessera-tokenizer 1\ntype word\nvocab_size 257\nmerges 0\nwords 1\n6461\nxx\n",  /* trailing */
        "tessera-tokenizer 1\ntype word\nvocab_size 256\nmerges 0\n",                     /* no words line */
        "tessera-tokenizer 1\ntype word\nvocab_size 257\nmerges 1\n1 2\nwords 0\n",       /* merges */
    };
    expect_tokenizer_files_refused(path, bad, sizeof bad / sizeof *bad);
    unlink(path);
    free(path);
    ts_tokenizer_free(&a);
}

/* FNV-1a (32-bit) of a string, written out here apart from the library's. */
static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* Each token's unit is the word it spells, or the unknown run whose bytes it
 * is, or a BPE chunk; a unit's n-grams are fastText's 2- to 5-grams of
 * "<unit>", lowercased, position by position, hashed into the buckets. */
TEST(tokens_know_their_units_and_units_their_character_ngrams)
{
    const char *text = "the cat, the cat zzq 42";
    size_t n = strlen(text);
    ts_tokenizer w, bpe, byte;
    REQUIRE_OK(ts_tokenizer_train_words(&w, (const uint8_t *)text, n, 1000));
    REQUIRE_OK(ts_tokenizer_train_bpe(&bpe, (const uint8_t *)text, n, 300));
    REQUIRE_OK(ts_tokenizer_init_byte(&byte));
    const ts_tokenizer *toks[3] = {&w, &bpe, &byte};
    for (int k = 0; k < 3; k++) {
        int32_t *ids;
        size_t count;
        REQUIRE_OK(ts_tokenizer_encode(toks[k], (const uint8_t *)text, n, &ids, &count));
        uint32_t start[64], len[64];
        REQUIRE(count <= 64);
        REQUIRE_OK(ts_tokenizer_units(toks[k], (const uint8_t *)text, n, ids, count, start, len));
        size_t at = 0;
        for (size_t i = 0; i < count; i++) { /* a unit holds its token */
            EXPECTF(start[i] <= at && at + (size_t)toks[k]->len[ids[i]] <= start[i] + len[i],
                    "tokenizer %d, token %zu at %zu outside its unit [%u, +%u)", k, i, at, start[i], len[i]);
            at += (size_t)toks[k]->len[ids[i]];
        }
        /* "zzq" (seen once) is three byte tokens of one unit under words and bytes */
        const char *z = strstr(text, "zzq");
        int inside = 0;
        for (size_t i = 0; i < count; i++)
            if (start[i] == (uint32_t)(z - text) && len[i] == 3) inside++;
        if (k != 1) EXPECTF(inside == 3, "tokenizer %d: %d tokens in the unit zzq", k, inside);
        else EXPECTF(inside == 0, "BPE: zzq's chunk is ' zzq', not 'zzq' (%d)", inside);
        /* tokens that do not spell the text are an error */
        EXPECT_STATUS(ts_tokenizer_units(toks[k], (const uint8_t *)text, n - 1, ids, count, start, len),
                      TS_ERR_INVALID_ARG);
        ids[0] = (ids[0] + 1) % 256;
        EXPECT_STATUS(ts_tokenizer_units(toks[k], (const uint8_t *)text, n, ids, count, start, len),
                      TS_ERR_INVALID_ARG);
        free(ids);
    }
    int32_t g[64], want[6];
    const char *grams[6] = {"<c", "<ca", "<ca>", "ca", "ca>", "a>"};
    for (int i = 0; i < 6; i++) want[i] = (int32_t)(fnv1a(grams[i]) % 1000u);
    EXPECT(ts_char_ngrams((const uint8_t *)" Ca", 3, 1000, g, 64) == 6);
    for (int i = 0; i < 6; i++) EXPECTF(g[i] == want[i], "n-gram %d (%s): %d, want %d", i, grams[i], g[i], want[i]);
    EXPECT(ts_char_ngrams((const uint8_t *)"ca", 2, 1000, g, 4) == 4 && g[3] == want[3]); /* the beginning kept */
    EXPECT(ts_char_ngrams((const uint8_t *)" ", 1, 1000, g, 64) == 3 && g[1] == (int32_t)(fnv1a("< >") % 1000u));
    /* a long word: 4 per position, all in range */
    uint8_t longw[300];
    memset(longw, 'x', sizeof longw);
    int m = ts_char_ngrams(longw, sizeof longw, 7, g, 64);
    EXPECT(m == 64);
    for (int i = 0; i < m; i++) EXPECT(g[i] >= 0 && g[i] < 7);
    ts_tokenizer_free(&w), ts_tokenizer_free(&bpe), ts_tokenizer_free(&byte);
}

TEST(tokenizer_specs_train_or_load_and_bad_sizes_are_errors)
{
    const char *text = "one two two one three";
    ts_tokenizer t;
    REQUIRE_OK(ts_tokenizer_from_spec(&t, "byte", (const uint8_t *)text, strlen(text)));
    EXPECT(t.kind == TS_TOKENIZER_BYTE && t.vocab_size == 256);
    ts_tokenizer_free(&t);
    REQUIRE_OK(ts_tokenizer_from_spec(&t, "bpe:300", (const uint8_t *)text, strlen(text)));
    EXPECT(t.kind == TS_TOKENIZER_BPE);
    ts_tokenizer_free(&t);
    REQUIRE_OK(ts_tokenizer_from_spec(&t, "word:300", (const uint8_t *)text, strlen(text)));
    EXPECT(t.kind == TS_TOKENIZER_WORD && t.n_words == 2);
    ts_tokenizer_free(&t);
    static const char *bad[] = {"word:", "word:12x", "bpe:100", "word:255", "word:99999999999", "bpe:-300"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ts_status st = ts_tokenizer_from_spec(&t, bad[i], (const uint8_t *)text, strlen(text));
        EXPECTF(st == TS_ERR_INVALID_ARG, "%s: %s", bad[i], ts_status_name(st));
        EXPECT(strstr(ts_last_error(), bad[i]) || strstr(ts_last_error(), "vocabulary size"));
    }
    EXPECT(ts_tokenizer_from_spec(&t, "/nonexistent/tok.txt", NULL, 0) != TS_OK);
}

TEST(token_files_round_trip_and_damage_is_rejected)
{
    char *path = tmpfile_path("tokens");
    int32_t ids[1000];
    for (int i = 0; i < 1000; i++) ids[i] = (i * 37) % 300;
    REQUIRE_OK(ts_tokens_write(path, ids, 1000, 300, 0xABCD));
    EXPECT(ts_is_token_file(path));
    ts_dataset ds;
    REQUIRE_OK(ts_dataset_open_tokens(&ds, path, 0.1));
    EXPECT(ds.vocab_size == 300 && ds.train_tokens == 900 && ds.val_tokens == 100);
    int32_t in[2 * 16], tg[2 * 16];
    REQUIRE_OK(ts_dataset_batch(&ds, TS_SPLIT_VAL, 0, 0, 2, 16, in, tg));
    EXPECT(in[0] == ids[900] && tg[0] == ids[901] && in[16] == ids[916]);
    ts_dataset_close(&ds);
    EXPECT_STATUS(ts_tokens_write(path, (int32_t[]){5, 400}, 2, 300, 0), TS_ERR_INVALID_ARG);
    /* damage: read the good file, then write broken variants */
    REQUIRE_OK(ts_tokens_write(path, ids, 1000, 300, 0xABCD));
    FILE *f = fopen(path, "rb");
    unsigned char buf[64 + 2000];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    REQUIRE(n == sizeof buf);
    write_bytes(path, buf, n - 3);
    EXPECT_STATUS(ts_dataset_open_tokens(&ds, path, 0.1), TS_ERR_FORMAT);
    EXPECTF(strstr(ts_last_error(), "truncated"), "%s", ts_last_error());
    buf[0] = 'X';
    write_bytes(path, buf, n);
    EXPECT_STATUS(ts_dataset_open_tokens(&ds, path, 0.1), TS_ERR_FORMAT);
    buf[0] = 'T';
    buf[64 + 100] = 0xff, buf[64 + 101] = 0xff; /* token 65535 >= vocabulary 300 */
    write_bytes(path, buf, n);
    EXPECT_STATUS(ts_dataset_open_tokens(&ds, path, 0.1), TS_ERR_FORMAT);
    EXPECTF(strstr(ts_last_error(), "outside the vocabulary"), "%s", ts_last_error());
    EXPECT_STATUS(ts_dataset_open_tokens(&ds, "/nonexistent.tok", 0.1), TS_ERR_IO);
    unlink(path);
    free(path);
}

/* Batches depend on (seed, sample index) alone: resuming and splitting a
 * batch over ranks reproduce the same rows. */
TEST(batches_are_a_function_of_seed_and_sample_index)
{
    char *path = tmpfile_path("tokens");
    int32_t *ids = malloc(5000 * sizeof *ids);
    for (int i = 0; i < 5000; i++) ids[i] = i % 251;
    REQUIRE_OK(ts_tokens_write(path, ids, 5000, 251, 1));
    ts_dataset ds;
    REQUIRE_OK(ts_dataset_open_tokens(&ds, path, 0.1));
    int32_t a[4 * 8], at[4 * 8], b[4 * 8], bt[4 * 8], c[4 * 8], ct[4 * 8];
    REQUIRE_OK(ts_dataset_batch(&ds, TS_SPLIT_TRAIN, 7, 40, 4, 8, a, at));
    REQUIRE_OK(ts_dataset_batch(&ds, TS_SPLIT_TRAIN, 7, 40, 2, 8, b, bt));
    REQUIRE_OK(ts_dataset_batch(&ds, TS_SPLIT_TRAIN, 7, 42, 2, 8, b + 16, bt + 16));
    EXPECT(!memcmp(a, b, sizeof a) && !memcmp(at, bt, sizeof at));
    REQUIRE_OK(ts_dataset_batch(&ds, TS_SPLIT_TRAIN, 8, 40, 4, 8, c, ct));
    EXPECT(memcmp(a, c, sizeof a) != 0);
    for (int r = 0; r < 4; r++)
        for (int t = 0; t + 1 < 8; t++) EXPECT(at[r * 8 + t] == a[r * 8 + t + 1]);
    for (int i = 0; i < 32; i++) EXPECT(a[i] >= 0 && a[i] < 251);
    int32_t big[1 * 600], bigt[600];
    EXPECT_STATUS(ts_dataset_batch(&ds, TS_SPLIT_VAL, 0, 0, 1, 600, big, bigt), TS_ERR_INVALID_ARG);
    ts_dataset_close(&ds);
    unlink(path);
    free(path);
    free(ids);
}

TEST(text_is_tokenized_once_and_cached)
{
    char *text = tmpfile_path("text");
    write_bytes(text, sample_text, strlen(sample_text));
    char cache[] = "/tmp/tessera-cache-XXXXXX";
    REQUIRE(mkdtemp(cache));
    ts_tokenizer tok;
    REQUIRE_OK(ts_tokenizer_init_byte(&tok));
    ts_dataset a, b;
    REQUIRE_OK(ts_dataset_open_text(&a, text, &tok, cache, 0.2));
    REQUIRE_OK(ts_dataset_open_text(&b, text, &tok, cache, 0.2));
    EXPECT(a.fingerprint == b.fingerprint && a.train_tokens + a.val_tokens == (int64_t)strlen(sample_text));
    char cmd[512];
    snprintf(cmd, sizeof cmd, "test $(ls %s/*.tok | wc -l) -eq 1", cache);
    EXPECT(system(cmd) == 0);
    ts_dataset_close(&a), ts_dataset_close(&b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", cache);
    if (system(cmd) != 0) th_note("could not remove %s", cache);
    unlink(text);
    free(text);
    ts_tokenizer_free(&tok);
}

TEST(json_parses_documents_and_rejects_malformed_ones)
{
    const char *good = "{\"a\": [1, -2.5e3, true, null], \"s\": \"x\\n\\u00e9\\ud83d\\ude00\", \"o\": {}}";
    ts_json *j;
    REQUIRE_OK(ts_json_parse(good, strlen(good), &j));
    const ts_json *a = ts_json_get(j, "a");
    EXPECT(a && a->type == TS_JSON_ARRAY && a->count == 4);
    EXPECT(a->items[0].is_integer && a->items[0].integer == 1 && a->items[1].number == -2500.0);
    EXPECT(!strcmp(ts_json_get_str(j, "s", ""), "x\n\xc3\xa9\xf0\x9f\x98\x80"));
    EXPECT(ts_json_get_int(j, "missing", 42) == 42);
    ts_json_free(j);
    static const char *bad[] = {"", "{", "{\"a\" 1}", "[1, 2", "{\"a\": tru}", "\"unterminated", "[1] x",
                                "{\"a\": \"\\q\"}", "[01x]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ts_status st = ts_json_parse(bad[i], strlen(bad[i]), &j);
        EXPECTF(st == TS_ERR_FORMAT, "'%s' parsed: %s", bad[i], ts_status_name(st));
    }
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    EXPECT_STATUS(ts_json_parse(deep, 200, &j), TS_ERR_FORMAT);
}

TEST(safetensors_round_trip_with_metadata_and_validation)
{
    char *path = tmpfile_path("st");
    ts_st_writer *w;
    REQUIRE_OK(ts_st_writer_new(&w));
    float x[6] = {1, 2, 3, 4, 5, 6};
    int32_t y[3] = {7, 8, 9};
    REQUIRE_OK(ts_st_writer_meta(w, "note", "a \"quoted\" value"));
    REQUIRE_OK(ts_st_writer_add_host(w, "x", TS_F32, TS_SHAPE(2, 3), x));
    REQUIRE_OK(ts_st_writer_add_host(w, "y", TS_I32, TS_SHAPE(3), y));
    EXPECT_STATUS(ts_st_writer_add_host(w, "x", TS_F32, TS_SHAPE(6), x), TS_ERR_INVALID_ARG);
    REQUIRE_OK(ts_st_writer_write(w, path));
    ts_st_writer_free(w);
    ts_safetensors f;
    REQUIRE_OK(ts_safetensors_open(path, &f));
    EXPECT(f.count == 2 && !strcmp(ts_safetensors_meta(&f, "note"), "a \"quoted\" value"));
    const ts_st_entry *e = ts_safetensors_find(&f, "x");
    EXPECT(e && e->ndim == 2 && e->shape[1] == 3 && !memcmp(ts_safetensors_data(&f, e), x, sizeof x));
    EXPECT(f.data_start % 8 == 0);
    ts_safetensors_close(&f);
    /* hand-made headers that must be refused */
    struct {
        const char *header;
        size_t data;
    } bad[] = {
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8},
        {"{\"x\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12},
        {"[1,2]", 0},
        /* 2^40 x 2^24 elements: a product that wraps to 0 in 64 bits */
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1099511627776,16777216],\"data_offsets\":[0,0]}}", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t hl = strlen(bad[i].header);
        unsigned char *buf = calloc(1, 8 + hl + bad[i].data);
        for (int k = 0; k < 8; k++) buf[k] = (unsigned char)((uint64_t)hl >> (8 * k));
        memcpy(buf + 8, bad[i].header, hl);
        write_bytes(path, buf, 8 + hl + bad[i].data);
        free(buf);
        ts_status st = ts_safetensors_open(path, &f);
        EXPECTF(st == TS_ERR_FORMAT, "case %zu opened: %s", i, ts_status_name(st));
    }
    unlink(path);
    free(path);
}

TEST(llmc_token_files_are_read_and_their_damage_rejected)
{
    char *path = tmpfile_path("llmc");
    enum { N = 300 };
    unsigned char buf[1024 + 2 * N];
    memset(buf, 0, sizeof buf);
    int32_t head[3] = {20240520, 1, N};
    memcpy(buf, head, sizeof head); /* little-endian hosts, as llm.c writes it */
    for (int i = 0; i < N; i++) {
        uint16_t t = (uint16_t)(i * 167 % 50257);
        memcpy(buf + 1024 + 2 * i, &t, 2);
    }
    write_bytes(path, buf, sizeof buf);
    EXPECT(ts_is_token_file(path));
    ts_dataset ds;
    REQUIRE_OK(ts_dataset_open_tokens(&ds, path, 0.1));
    EXPECT(ds.vocab_size == 50257 && ds.train_tokens + ds.val_tokens == N && ds.tokenizer_fingerprint == 0);
    int32_t in[8], tg[8];
    REQUIRE_OK(ts_dataset_batch(&ds, TS_SPLIT_VAL, 0, 0, 1, 8, in, tg));
    EXPECT(in[0] == (int32_t)((N - ds.val_tokens) * 167 % 50257) && tg[0] == in[1]);
    ts_dataset_close(&ds);
    /* the whole file as validation: the first token is scored too */
    REQUIRE_OK(ts_dataset_open_tokens(&ds, path, 1.0));
    REQUIRE_OK(ts_dataset_batch(&ds, TS_SPLIT_VAL, 0, 0, 1, 8, in, tg));
    EXPECT(ds.val_tokens == N && in[0] == 0 && tg[0] == 167);
    ts_dataset_close(&ds);
    write_bytes(path, buf, sizeof buf - 7); /* truncated */
    EXPECT_STATUS(ts_dataset_open_tokens(&ds, path, 0.1), TS_ERR_FORMAT);
    head[1] = 7; /* unknown version */
    memcpy(buf, head, sizeof head);
    write_bytes(path, buf, sizeof buf);
    EXPECT_STATUS(ts_dataset_open_tokens(&ds, path, 0.1), TS_ERR_FORMAT);
    unlink(path);
    free(path);
}

TEST(text_must_be_utf8_without_nul_bytes)
{
    EXPECT_STATUS(ts_check_text((const uint8_t *)"caf\xc3\xa9 ok \xe2\x82\xac \xf0\x9f\x98\x80", 17, "t"), TS_OK);
    static const struct {
        const char *bytes;
        size_t n, offset;
    } bad[] = {
        {"ab\0cd", 5, 2},         {"ab\xff", 3, 2},         {"\xc3", 1, 0},
        {"x\xc0\x80", 3, 1},      {"\xed\xa0\x80", 3, 0},  {"\xf4\x90\x80\x80", 4, 0},
        {"ok\xe2\x82", 4, 2},     {"\x80", 1, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ts_status st = ts_check_text((const uint8_t *)bad[i].bytes, bad[i].n, "t");
        char want[32];
        snprintf(want, sizeof want, "offset %zu", bad[i].offset);
        EXPECTF(st == TS_ERR_FORMAT && strstr(ts_last_error(), want), "case %zu: %s: %s", i, ts_status_name(st),
                ts_last_error());
    }
}

int main(int argc, char **argv)
{
    TH_ADD(byte_tokenizer_round_trips_every_byte);
    TH_ADD(bpe_compresses_round_trips_and_is_deterministic);
    TH_ADD(bpe_round_trips_arbitrary_bytes);
    TH_ADD(tokenizer_files_round_trip_and_damage_is_rejected);
    TH_ADD(word_tokenizer_keeps_each_repeated_run_whole_and_round_trips);
    TH_ADD(tokens_know_their_units_and_units_their_character_ngrams);
    TH_ADD(tokenizer_specs_train_or_load_and_bad_sizes_are_errors);
    TH_ADD(token_files_round_trip_and_damage_is_rejected);
    TH_ADD(batches_are_a_function_of_seed_and_sample_index);
    TH_ADD(text_is_tokenized_once_and_cached);
    TH_ADD(json_parses_documents_and_rejects_malformed_ones);
    TH_ADD(safetensors_round_trip_with_metadata_and_validation);
    TH_ADD(llmc_token_files_are_read_and_their_damage_rejected);
    TH_ADD(text_must_be_utf8_without_nul_bytes);
    return th_run(argc, argv);
}
