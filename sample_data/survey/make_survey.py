"""Simulate the small survey sample of README.md's survey section, deterministically (seed 2026):
30 schools, 2 classes each, 12 students per class, with sampling weights at every level and five
plausible values of a mathematics score. Run from this folder: python make_survey.py

stu.csv   students: SCHOOLID, CLASSID, ESCS, W_FSTUWT and W_STU (level-1 weights), PV1MATH..PV5MATH
cls.csv   classes:  CLASSID, SCHOOLID, W_CLS (class weight)
sch.csv   schools:  SCHOOLID, SCHESCS (school mean ESCS), W_SCHGRNRABWT and W_SCH (school weights)
"""

from __future__ import annotations

import csv

import numpy as np

rng = np.random.default_rng(2026)
SCHOOLS, CLASSES, STUDENTS, PVS = 30, 2, 12, 5

students, classes, schools = [], [], []
for s in range(1, SCHOOLS + 1):
    school_escs = rng.normal(0.0, 0.5)
    u_school = rng.normal(0.0, 20.0)
    slope = 15.0 + rng.normal(0.0, 4.0)
    escs_all = []
    for c in range(1, CLASSES + 1):
        class_id = s * 10 + c
        r_class = rng.normal(0.0, 8.0)
        classes.append([class_id, s, round(float(rng.uniform(0.8, 1.6)), 4)])
        for _ in range(STUDENTS):
            escs = school_escs + rng.normal(0.0, 0.8)
            escs_all.append(escs)
            ability = 480.0 + 30.0 * school_escs + u_school + r_class + slope * (escs - school_escs) + rng.normal(0.0, 60.0)
            pvs = [round(float(ability + rng.normal(0.0, 25.0)), 2) for _ in range(PVS)]
            w1 = round(float(rng.uniform(5.0, 40.0)), 3)
            students.append([s, class_id, round(float(escs), 3), w1, round(float(rng.uniform(0.5, 2.0)), 4), *pvs])
    schools.append([s, round(float(np.mean(escs_all)), 4), round(float(rng.uniform(10.0, 80.0)), 3),
                    round(float(rng.uniform(0.5, 2.5)), 4)])


def write(name: str, header: list[str], rows) -> None:
    with open(name, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)


write("stu.csv", ["SCHOOLID", "CLASSID", "ESCS", "W_FSTUWT", "W_STU"] + [f"PV{k}MATH" for k in range(1, PVS + 1)], students)
write("cls.csv", ["CLASSID", "SCHOOLID", "W_CLS"], classes)
write("sch.csv", ["SCHOOLID", "SCHESCS", "W_SCHGRNRABWT", "W_SCH"], schools)
