"""A folder of photos -> exact and near-duplicate groups.

The threshold is calibrated on the folder itself (:mod:`.calibration`), so no labels are needed.
"""
