/* MarginGate's threshold: choosing tau from a flip study and keeping it in
 * the user's settings (never in the model directory).
 *
 * Rule: the smallest threshold that catches every observed flip is just
 * above the largest fast-path (batched) margin seen at a flip; tau is that
 * value times MG_TAU_SAFETY, and never below MG_TAU_FLOOR. The safety factor
 * exists because flips on other datasets can sit at larger margins than the
 * calibration set's (RESEARCH.md: a MATH500-only fit missed 0.0625-margin
 * flips elsewhere); the floor covers a calibration set with only exact-tie
 * flips, or none. */
#ifndef MG_CALIBRATION_H
#define MG_CALIBRATION_H

#include <stddef.h>

#include "flips.h"

#define MG_TAU_SAFETY 2.0f
#define MG_TAU_FLOOR 0.125f

typedef struct {
    float tau;              /* chosen threshold */
    float min_catching;     /* largest batched margin at a flip (0 if no flips) */
    float trigger_rate;     /* fraction of the study's synchronous steps with margin < tau */
    int n_flips;
    long n_steps;
} mg_calibration;

/* Chooses tau from a flip report. */
mg_calibration mg_calibrate(const mg_flip_report *r);

/* Fraction of the report's synchronous steps whose batched margin is below tau. */
float mg_trigger_rate(const mg_flip_report *r, float tau);

/* Path of the settings file: $MARGINGATE_CONFIG, else
 * $XDG_CONFIG_HOME/margingate/calibration.json, else
 * $HOME/.config/margingate/calibration.json. */
mg_status mg_settings_path(char *buf, size_t n);

/* Records tau for the model at `model_path` (keyed by its real path), with
 * the dataset it came from. Creates the file and its folder as needed. */
mg_status mg_calibration_save(const char *model_path, const char *dataset, const mg_calibration *c);

/* Looks up the calibrated tau for the model at `model_path`. MG_ERR_IO if
 * there is none (callers then use a flag or the default). */
mg_status mg_calibration_load(const char *model_path, float *tau);

#endif
