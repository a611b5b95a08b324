/* Classification metrics (ts_metrics_compute, _print, _write_json) against
 * confusion matrices worked out by hand. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tessera/classify.h"
#include "testutil.h"

#define NEAR(a, b) (fabs((double)(a) - (double)(b)) < 1e-12)
#define EXPECT_NEAR(what, got, want) EXPECTF(NEAR(got, want), "%s: %.17g, want %.17g", what, (double)(got), (double)(want))

/* Four classes a, b, c, d and a row of unseen labels (rows: true label,
 * columns: predicted):
 *            a  b  c  d
 *   a        5  1  0  0    support 6
 *   b        2  3  0  0    support 5
 *   c        1  0  0  1    support 2, never predicted
 *   d        0  0  0  0    support 0, predicted once
 *   unseen   0  1  0  0
 * 14 examples, 8 right. */
static const int64_t hand[5 * 4] = {5, 1, 0, 0, 2, 3, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0};
static const char *const names4[] = {"a", "b", "c", "d"};

TEST(metrics_match_a_hand_computed_confusion_matrix)
{
    ts_class_metrics m;
    REQUIRE_OK(ts_metrics_compute(&m, 4, hand, 0.75));
    EXPECT(m.K == 4 && m.total == 14 && m.correct == 8 && m.unseen == 1);
    EXPECT_NEAR("accuracy", m.accuracy, 8.0 / 14.0);
    EXPECT(m.support[0] == 6 && m.support[1] == 5 && m.support[2] == 2 && m.support[3] == 0);
    /* a: 5 of the 8 predicted a are a; 5 of the 6 a found; F1 = 2tp / (2tp + fp + fn) */
    EXPECT_NEAR("precision a", m.precision[0], 5.0 / 8.0);
    EXPECT_NEAR("recall a", m.recall[0], 5.0 / 6.0);
    EXPECT_NEAR("f1 a", m.f1[0], 10.0 / 14.0);
    /* b: the unseen example predicted b is a false positive of b */
    EXPECT_NEAR("precision b", m.precision[1], 3.0 / 5.0);
    EXPECT_NEAR("recall b", m.recall[1], 3.0 / 5.0);
    EXPECT_NEAR("f1 b", m.f1[1], 3.0 / 5.0);
    for (int k = 2; k < 4; k++) {
        EXPECT_NEAR("precision c, d", m.precision[k], 0.0);
        EXPECT_NEAR("recall c, d", m.recall[k], 0.0);
        EXPECT_NEAR("f1 c, d", m.f1[k], 0.0);
    }
    EXPECT_NEAR("macro precision", m.macro_precision, (5.0 / 8.0 + 3.0 / 5.0) / 4.0);
    EXPECT_NEAR("macro recall", m.macro_recall, (5.0 / 6.0 + 3.0 / 5.0) / 4.0);
    EXPECT_NEAR("macro F1", m.macro_f1, (10.0 / 14.0 + 3.0 / 5.0) / 4.0);
    EXPECT(m.loss == 0.75);
    EXPECT(!memcmp(m.confusion, hand, sizeof hand));
    ts_metrics_free(&m);
}

/* zero_division = 0 as scikit-learn: a class never predicted, one never
 * true, and one neither, all give 0 and never NaN. */
TEST(classes_never_predicted_or_never_true_score_zero_not_nan)
{
    /*        x  y  z
     *   x    0  3  0     x never predicted: precision 0/0
     *   y    0  2  0
     *   z    0  0  0     z neither true nor predicted
     *   unseen row empty */
    const int64_t c[4 * 3] = {0, 3, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0};
    ts_class_metrics m;
    REQUIRE_OK(ts_metrics_compute(&m, 3, c, NAN));
    for (int k = 0; k < 3; k++)
        EXPECTF(isfinite(m.precision[k]) && isfinite(m.recall[k]) && isfinite(m.f1[k]),
                "class %d: precision %g, recall %g, F1 %g", k, m.precision[k], m.recall[k], m.f1[k]);
    EXPECT(m.precision[0] == 0.0 && m.recall[0] == 0.0 && m.f1[0] == 0.0);
    EXPECT(m.precision[2] == 0.0 && m.recall[2] == 0.0 && m.f1[2] == 0.0);
    EXPECT_NEAR("precision y", m.precision[1], 0.4);
    EXPECT_NEAR("recall y", m.recall[1], 1.0);
    EXPECT_NEAR("f1 y", m.f1[1], 2 * 0.4 / 1.4);
    EXPECT_NEAR("macro F1", m.macro_f1, (2 * 0.4 / 1.4) / 3.0);
    EXPECT_NEAR("accuracy", m.accuracy, 0.4);
    EXPECT(m.unseen == 0 && m.total == 5);
    ts_metrics_free(&m);
    /* no examples at all */
    const int64_t none[3 * 2] = {0};
    REQUIRE_OK(ts_metrics_compute(&m, 2, none, NAN));
    EXPECT(m.total == 0 && m.accuracy == 0.0 && m.macro_precision == 0.0 && m.macro_recall == 0.0 &&
           m.macro_f1 == 0.0);
    ts_metrics_free(&m);
}

TEST(a_perfect_classifier_scores_one_everywhere)
{
    const int64_t c[3 * 2] = {4, 0, 0, 7, 0, 0};
    ts_class_metrics m;
    REQUIRE_OK(ts_metrics_compute(&m, 2, c, 0.01));
    EXPECT(m.accuracy == 1.0 && m.macro_precision == 1.0 && m.macro_recall == 1.0 && m.macro_f1 == 1.0);
    EXPECT(m.precision[0] == 1.0 && m.recall[1] == 1.0 && m.f1[1] == 1.0 && m.support[1] == 7);
    ts_metrics_free(&m);
}

/* The JSON object holds what the struct holds (at float precision), the
 * unseen row only when there are unseen labels, and null for no loss. */
TEST(metrics_json_holds_the_computed_values)
{
    ts_label_set labels = {4, (char **)names4};
    for (int with_unseen = 0; with_unseen < 2; with_unseen++) {
        int64_t c[5 * 4];
        memcpy(c, hand, sizeof c);
        if (!with_unseen) c[4 * 4 + 1] = 0;
        ts_class_metrics m;
        REQUIRE_OK(ts_metrics_compute(&m, 4, c, with_unseen ? 0.5 : NAN));
        char *text = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&text, &n);
        REQUIRE(f);
        ts_metrics_write_json(f, &m, &labels);
        fclose(f);
        ts_json *j = NULL;
        REQUIRE_OK(ts_json_parse(text, n, &j));
        EXPECT(fabs(ts_json_get_num(j, "accuracy", -1) - m.accuracy) < 1e-7);
        EXPECT(fabs(ts_json_get_num(j, "macro_precision", -1) - m.macro_precision) < 1e-7);
        EXPECT(fabs(ts_json_get_num(j, "macro_recall", -1) - m.macro_recall) < 1e-7);
        EXPECT(fabs(ts_json_get_num(j, "macro_f1", -1) - m.macro_f1) < 1e-7);
        EXPECT(ts_json_get_int(j, "examples", -1) == m.total && ts_json_get_int(j, "correct", -1) == m.correct &&
               ts_json_get_int(j, "unseen", -1) == m.unseen);
        const ts_json *loss = ts_json_get(j, "loss");
        EXPECTF(loss && (with_unseen ? loss->type == TS_JSON_NUMBER && loss->number == 0.5 : loss->type == TS_JSON_NULL),
                "loss: %s", text);
        const ts_json *lab = ts_json_get(j, "labels"), *per = ts_json_get(j, "per_class"), *conf = ts_json_get(j, "confusion");
        REQUIRE(lab && lab->type == TS_JSON_ARRAY && lab->count == 4);
        REQUIRE(per && per->type == TS_JSON_OBJECT && per->count == 4);
        REQUIRE(conf && conf->type == TS_JSON_ARRAY);
        EXPECTF(conf->count == (size_t)(with_unseen ? 5 : 4), "%zu confusion rows: %s", conf->count, text);
        for (int k = 0; k < 4; k++) {
            EXPECT(!strcmp(lab->items[k].string, names4[k]));
            const ts_json *pk = ts_json_get(per, names4[k]);
            REQUIRE(pk);
            EXPECT(fabs(ts_json_get_num(pk, "precision", -1) - m.precision[k]) < 1e-7);
            EXPECT(fabs(ts_json_get_num(pk, "recall", -1) - m.recall[k]) < 1e-7);
            EXPECT(fabs(ts_json_get_num(pk, "f1", -1) - m.f1[k]) < 1e-7);
            EXPECT(ts_json_get_int(pk, "support", -1) == m.support[k]);
        }
        for (size_t t = 0; t < conf->count; t++) {
            REQUIRE(conf->items[t].type == TS_JSON_ARRAY && conf->items[t].count == 4);
            for (int p = 0; p < 4; p++) EXPECT(conf->items[t].items[p].integer == c[t * 4 + p]);
        }
        ts_json_free(j);
        free(text);
        ts_metrics_free(&m);
    }
}

/* The table: a row per class with its numbers, the macro means, the
 * accuracy with its counts, and the confusion matrix with the unseen row. */
TEST(metrics_table_shows_every_class_and_the_unseen_row)
{
    ts_label_set labels = {4, (char **)names4};
    ts_class_metrics m;
    REQUIRE_OK(ts_metrics_compute(&m, 4, hand, 0.75));
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    REQUIRE(f);
    ts_metrics_print(f, &m, &labels);
    fclose(f);
    const char *want[] = {
        "a             0.625     0.833     0.714         6\n",
        "b             0.600     0.600     0.600         5\n",
        "c             0.000     0.000     0.000         2\n",
        "d             0.000     0.000     0.000         0\n",
        "macro avg     0.306     0.358     0.329        14\n",
        "accuracy                          0.571        14   (8 of 14 right)\n",
        "1 examples have a label the model does not know: counted as wrong\n",
        "(unseen)        0       1       0       0\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        EXPECTF(strstr(text, want[i]), "the table lacks the line\n%s-- it is:\n%s", want[i], text);
    free(text);
    ts_metrics_free(&m);
}

int main(int argc, char **argv)
{
    TH_ADD(metrics_match_a_hand_computed_confusion_matrix);
    TH_ADD(classes_never_predicted_or_never_true_score_zero_not_nan);
    TH_ADD(a_perfect_classifier_scores_one_everywhere);
    TH_ADD(metrics_json_holds_the_computed_values);
    TH_ADD(metrics_table_shows_every_class_and_the_unseen_row);
    return th_run(argc, argv);
}
