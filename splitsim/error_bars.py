"""The error bars' statistics, shared by the run's intervals (sim/uncertainty.py) and calibration's check of
them (validate/calibrate.py): a two-sided 80 % interval on a log-normal error whose median is a fit's held-out
median error."""

LEVEL = 0.8
Z = 1.2815515655446004  # the standard normal's 90th percentile: a two-sided 80 % interval
HALF_NORMAL_MEDIAN = 0.6744897501960817  # the median of |N(0, 1)|
