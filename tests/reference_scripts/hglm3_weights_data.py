# The three-level Bernoulli data of tests/test_hglm3_weights.py (tests/data/hglm3_weights/bern_l{1,2,3}.csv):
# 24 schools, 2-4 classes each, 3-7 pupils each; Y = PV1 and PV2, PV3 drawn from the same model with extra
# noise; sampling weights W1/W2/W3 (fractional), W1I/W2I/W3I (whole numbers) and ONE1/ONE2/ONE3 (all 1). Seed 13 (interior optima for
# every outcome, weighted and not). Run from tests/data/hglm3_weights:  python ../../reference_scripts/hglm3_weights_data.py 13
# The data of the restart test (restart_l{1,2,3}.csv, written with the prefix "restart": the search's first
# optimum is the false boundary τπ = 0):  python ../../reference_scripts/hglm3_weights_data.py 7 1.0 0.8 restart
import numpy as np, pandas as pd, sys
seed=int(sys.argv[1])
sd3, sd2 = (float(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (0.9, 1.0)
prefix = sys.argv[4] if len(sys.argv) > 4 else "bern"
rng = np.random.default_rng(seed)
rows1, rows2, rows3 = [], [], []
for s in range(24):
    sid = f"s{s+1:02d}"; Z = round(rng.normal(), 3); u3 = rng.normal(0, sd3)
    rows3.append(dict(SCHOOL=sid, Z=Z, W3=round(rng.uniform(0.5, 2.5), 3), W3I=int(rng.integers(1, 3)), ONE3=1))
    for c in range(int(rng.integers(2, 5))):
        cid = f"{sid}c{c+1}"; W = round(rng.normal(), 3); u2 = rng.normal(0, sd2)
        rows2.append(dict(CLASS=cid, SCHOOL=sid, W=W, W2=round(rng.uniform(0.5, 2.0), 3), W2I=int(rng.integers(1, 3)), ONE2=1))
        for i in range(int(rng.integers(3, 8))):
            X = round(rng.normal(), 3)
            eta = -0.3 + 0.7 * X + 0.5 * W - 0.4 * Z + u2 + u3
            ys = [int(rng.random() < 1 / (1 + np.exp(-(eta + rng.normal(0, 0.3))))) for _ in range(3)]
            rows1.append(dict(CLASS=cid, X=X, Y=ys[0], PV1=ys[0], PV2=ys[1], PV3=ys[2],
                              W1=round(rng.uniform(0.3, 3.0), 3), W1I=int(rng.integers(1, 4)), ONE1=1))
pd.DataFrame(rows1).to_csv(f"{prefix}_l1.csv", index=False)
pd.DataFrame(rows2).to_csv(f"{prefix}_l2.csv", index=False)
pd.DataFrame(rows3).to_csv(f"{prefix}_l3.csv", index=False)
