#!/usr/bin/env python3
"""The anchor for `tessera classify`: TF-IDF word and character n-grams with
logistic regression (scikit-learn), trained on a labeled JSON-lines file and
scored on another, with the figures `tessera classify eval` reports.

usage: classify_anchor.py TRAIN.jsonl TEST.jsonl [--json OUT]
"""
import argparse
import json
import sys
import time


def read(path):
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                texts.append(o["text"])
                labels.append(str(o["label"]))
    return texts, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    try:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    except ImportError as e:
        sys.exit(f"the anchor needs scikit-learn (Debian: python3-sklearn): {e}")
    start = time.perf_counter()
    xtr, ytr = read(a.train)
    xte, yte = read(a.test)
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    ftr = hstack([words.fit_transform(xtr), chars.fit_transform(xtr)]).tocsr()
    fte = hstack([words.transform(xte), chars.transform(xte)]).tocsr()
    clf = LogisticRegression(C=10, max_iter=2000).fit(ftr, ytr)
    pred = clf.predict(fte)
    seconds = time.perf_counter() - start
    p, r, f, _ = precision_recall_fscore_support(yte, pred, average="macro", zero_division=0)
    out = {"method": "tf-idf word 1-2 + char 2-5 grams, logistic regression (scikit-learn)",
           "accuracy": accuracy_score(yte, pred), "macro_precision": p, "macro_recall": r, "macro_f1": f,
           "seconds": seconds, "train_examples": len(ytr), "test_examples": len(yte)}
    print(f"anchor (TF-IDF + logistic regression): accuracy {100 * out['accuracy']:.2f}%, macro P {p:.3f} "
          f"R {r:.3f} F1 {f:.3f}, {seconds:.1f} s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
