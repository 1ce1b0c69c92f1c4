#!/usr/bin/env python3
"""Derive the Lloyd-Max codebooks of src/tvcodec.c.

turbovec quantizes each rotated coordinate, which is close to N(0, 1), with
the mean-squared-error optimal scalar quantizer for the standard normal:
Lloyd-Max with 4, 8 and 16 levels.  The C code hard-codes the levels printed
here (as float literals, so codes never depend on a machine's libm); this
script exists so the constants are reproducible.

Lloyd's iteration alternates the two optimality conditions until nothing
moves: each threshold is the midpoint of its two neighbouring levels, and
each level is the conditional mean of N(0, 1) over its interval,

    E[X | a < X < b] = (phi(a) - phi(b)) / (Phi(b) - Phi(a)).

Only the Python standard library is used.  Run: python3 tools/lloyd_max.py
"""

import math


def pdf(x):
    if math.isinf(x):
        return 0.0
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def cdf(x):
    if x == -math.inf:
        return 0.0
    if x == math.inf:
        return 1.0
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def lloyd_max(nlevels, tol=1e-15, max_iter=1000000):
    """Levels and distortion of the nlevels-point Lloyd-Max quantizer."""
    # Start from evenly spaced levels; the iteration is a contraction here.
    levels = [(-1.0 + (2.0 * k + 1.0) / nlevels) * 2.0 for k in range(nlevels)]
    for _ in range(max_iter):
        edges = [-math.inf]
        edges += [(levels[k] + levels[k + 1]) / 2.0 for k in range(nlevels - 1)]
        edges += [math.inf]
        new = []
        for k in range(nlevels):
            a, b = edges[k], edges[k + 1]
            new.append((pdf(a) - pdf(b)) / (cdf(b) - cdf(a)))
        # Enforce exact symmetry, which the true optimum has.
        new = [(new[k] - new[nlevels - 1 - k]) / 2.0 for k in range(nlevels)]
        moved = max(abs(x - y) for x, y in zip(new, levels))
        levels = new
        if moved < tol:
            break
    return levels, distortion(levels)


def distortion(levels):
    """E[(X - Q(X))^2] for X ~ N(0, 1), by the closed form per interval."""
    n = len(levels)
    edges = [-math.inf]
    edges += [(levels[k] + levels[k + 1]) / 2.0 for k in range(n - 1)]
    edges += [math.inf]
    total = 0.0
    for k in range(n):
        a, b, c = edges[k], edges[k + 1], levels[k]
        p = cdf(b) - cdf(a)
        m1 = pdf(a) - pdf(b)                      # integral of x phi(x)
        aa = 0.0 if math.isinf(a) else a * pdf(a)
        bb = 0.0 if math.isinf(b) else b * pdf(b)
        m2 = p + aa - bb                          # integral of x^2 phi(x)
        total += m2 - 2.0 * c * m1 + c * c * p
    return total


def main():
    for bits in (2, 3, 4):
        levels, mse = lloyd_max(1 << bits)
        print("/* %d bits: MSE %.6f per unit variance */" % (bits, mse))
        for k in range(0, len(levels), 4):
            row = ", ".join("%.9ef" % x for x in levels[k:k + 4])
            print("\t" + row + ",")


if __name__ == "__main__":
    main()
