//! The tables the MCM stage kinds write, with every column's definition: what
//! `cargo xtask kinds` prints, what plot stages are checked against at plan
//! time, and what each stored table's metadata says.

use e2h_engine::TableDoc;

/// The model, noise and learning-rate columns a trajectory row repeats.
const MODEL_COLUMNS: &[(&str, &str)] = &[
    ("t", "diffusion time of the OU noising"),
    ("delta", "learning-rate constant: eta = delta / d^lr_exponent"),
    ("eta", "learning rate delta / d^lr_exponent"),
    ("activation", "activation g of the neurons"),
    ("coupling", "latent coupling: none or linear"),
    ("rho", "strength of the linear latent coupling"),
    ("beta_u", "signal strength of the covariance spike u"),
    ("beta_v", "signal strength of the non-Gaussian direction v"),
    ("nu", "law of the non-Gaussian latent nu"),
];

fn with(columns: &[(&str, &str)], more: &[(&str, &str)]) -> Vec<(String, String)> {
    columns.iter().chain(more).map(|(c, d)| (c.to_string(), d.to_string())).collect()
}

/// `mcm.trajectories`.
pub fn trajectories() -> Vec<TableDoc> {
    let quartiles = |what: &str, def: &str| -> Vec<(String, String)> {
        ["q25", "median", "q75"]
            .iter()
            .map(|q| (format!("{what}_{q}"), format!("{q} over replicas of {def}")))
            .collect()
    };
    let mut by_n = vec![("n".to_string(), "training samples seen".to_string()), ("n_over_d".into(), "n / d".into())];
    by_n.extend(quartiles("abs_m_u", "max_k |m_u|"));
    by_n.extend(quartiles("abs_m_v", "max_k |m_v|"));
    by_n.extend(quartiles("excess_mcm", "loss_mcm - loss_isotropic (exact losses where K <= 2, else the Monte Carlo estimate)"));
    by_n.extend(quartiles("excess_gauss", "loss_gauss - loss_isotropic"));
    by_n.push(("excess_wiener".into(), "loss_wiener - loss_isotropic".into()));
    by_n.push(("loss_isotropic".into(), "analytic loss of alpha x_t (optimal for isotropic data)".into()));
    by_n.extend(quartiles("gap_mcm", "loss_mcm - loss_best (exact losses where K <= 2)"));
    by_n.extend(quartiles("gap_gauss", "loss_gauss - loss_best"));
    by_n.push(("gap_wiener".into(), "loss_wiener - loss_best".into()));
    by_n.push(("gap_isotropic".into(), "loss_isotropic - loss_best".into()));
    by_n.push((
        "loss_best".into(),
        "the best MCM loss the architecture reaches (K neurons, learned readouts; quadrature at the population optimum; NaN for K > 2)".into(),
    ));
    let mut by_role = vec![
        ("n".to_string(), "training samples seen".to_string()),
        ("n_over_d".into(), "n / d".into()),
        (
            "neuron_role".into(),
            "u_neuron: in each run, the neuron with the largest final |m_u|; other_neuron: the others (the largest value over them)".into(),
        ),
    ];
    by_role.extend(quartiles("abs_m_u", "|m_u| of the neuron(s) of that role"));
    by_role.extend(quartiles("abs_m_v", "|m_v| of the neuron(s) of that role"));
    by_role.extend(quartiles("a", "the amplitude a_k"));
    by_role.extend(quartiles("b", "the linear gain b_k"));
    vec![
        TableDoc {
            name: "trajectory".into(),
            columns: with(
                &[
                    ("seed", "replica index (its own initialisation and sample stream)"),
                    ("d", "dimension"),
                    ("n", "training samples seen (one pSGD step each)"),
                    ("n_over_d", "n / d"),
                    ("neuron", "neuron index k"),
                    ("m_u", "overlap w_k . u (sign is a symmetry for odd g)"),
                    ("m_v", "overlap w_k . v"),
                    ("a", "amplitude a_k of the neuron's nonlinearity"),
                    ("b", "linear gain b_k of the neuron"),
                    ("loss_mcm", "test loss 1/2 ||D(x_t) - x||^2 per sample on fresh MCM samples (analytic alpha x_t baseline + mean excess)"),
                    ("loss_mcm_se", "standard error of loss_mcm"),
                    ("loss_gauss", "same on fresh samples of the Gaussian surrogate N(0, C)"),
                    ("loss_gauss_se", "standard error of loss_gauss"),
                    ("loss_mcm_exact", "population value of loss_mcm, by quadrature over the overlaps and readouts (K <= 2; NaN otherwise)"),
                    ("loss_gauss_exact", "population value of loss_gauss, by quadrature"),
                    ("loss_wiener", "analytic loss of the optimal linear denoiser"),
                    ("loss_isotropic", "analytic loss of alpha x_t (optimal for isotropic data)"),
                ],
                MODEL_COLUMNS,
            ),
        },
        TableDoc { name: "by_n".into(), columns: by_n },
        TableDoc { name: "by_role".into(), columns: by_role },
        TableDoc::new(
            "theory",
            &[
                ("n", "training samples"),
                ("n_over_d", "n / d"),
                ("abs_m_u", "ODE of the overlaps: spherical gradient flow of the population loss plus the eta^2 d G contraction, from |m| = 1/sqrt(d)"),
                ("abs_m_v", "same for |m_v|"),
            ],
        ),
        TableDoc::new(
            "summary",
            &[
                ("learned_threshold", "|m| at which a direction counts as learned"),
                ("n_over_d_u_learned", "first grid n/d at which the median max_k|m_u| reaches learned_threshold (inf: never)"),
                ("n_over_d_v_learned", "same for |m_v|"),
                ("final_abs_m_u_median", "median max_k |m_u| at n_max"),
                ("final_abs_m_v_median", "median max_k |m_v| at n_max"),
                ("optimum_abs_m_u", "|m_u| at the minimum of the single-neuron population loss (quadrature; NaN for a learned readout)"),
                ("optimum_abs_m_v", "|m_v| at the minimum of the population loss"),
                ("final_m_v_over_optimum", "final_abs_m_v_median / optimum_abs_m_v (NaN when the optimum has m_v = 0)"),
                ("final_mcm_minus_wiener", "median loss_mcm - loss_wiener at n_max (negative: beats every linear denoiser)"),
                ("final_gauss_minus_wiener", "median loss_gauss - loss_wiener at n_max (never below 0 beyond noise)"),
                ("v_over_u_learned", "n_over_d_v_learned / n_over_d_u_learned: how much later v is learned than u"),
                ("final_excess_mcm", "median loss_mcm - loss_isotropic at n_max (negative: beats alpha x_t)"),
                ("final_mcm_minus_gauss", "median over runs of loss_mcm - loss_gauss at n_max (negative: exploits more than pair-wise statistics)"),
                ("final_mcm_minus_gauss_se", "median over runs of the standard error of that difference (0 for exact losses)"),
            ],
        ),
    ]
}

/// `mcm.recovery`.
pub fn recovery() -> Vec<TableDoc> {
    vec![TableDoc::new(
        "recovery",
        &[
            ("d", "dimension"),
            ("seed", "replica index"),
            ("n_star", "first sample count with max_k |m| >= threshold (checked every max(1, d/8) samples); the budget when censored"),
            ("censored", "true when the run hit its budget before reaching the threshold"),
            ("initial_overlap", "|m| of the random initialisation"),
            ("threshold", "threshold_fraction x |m| at the population-loss minimum, unless given"),
            ("budget", "samples per run: budget_factor x d^budget_exponent"),
            ("n_star_theory", "ODE prediction (spherical gradient flow + eta^2 d G contraction) from |m_u| = |m_v| = 1/sqrt(d)"),
            ("eta", "learning rate delta / d^lr_exponent"),
            ("direction", "u or v"),
            ("coupling", "latent coupling: none or linear"),
            ("simulator", "reduced (the exact chain on the overlaps) or full (d-dimensional samples)"),
        ],
    )]
}

/// `mcm.scaling_fit`.
pub fn scaling_fit() -> Vec<TableDoc> {
    vec![
        TableDoc::new(
            "medians",
            &[
                ("case", "the input (case) the row belongs to"),
                ("d", "dimension"),
                ("n_median", "median over runs of n* (censored runs count at the budget)"),
                ("n_q25", "25% quantile over runs of n*"),
                ("n_q75", "75% quantile over runs of n*"),
                ("censored_fraction", "fraction of runs that hit the budget"),
                ("mostly_censored", "1 when at least half the runs are censored (the median is then a lower bound)"),
                ("n_theory", "ODE prediction of n* from the typical start"),
                ("n_over_dlogd", "n_median / (d ln d)"),
                ("n_over_theory", "n_median / n_theory: the finite-size deviation from the d -> infinity ODE"),
                ("n_fit", "fitted power law exp(intercept) d^slope"),
                ("legend", "legend label of the case, with its fitted slope"),
                ("d_log_d", "reference d ln d, scaled to the case's first median"),
                ("d_cubed", "reference d^3, scaled to the case's first median"),
            ],
        ),
        TableDoc::new(
            "fit",
            &[
                ("case", "the input (case) the row belongs to"),
                ("slope", "least-squares slope of ln n_median against ln d (d with < 50% censored runs)"),
                ("slope_lo", "2.5% bootstrap quantile of the slope (runs resampled within each d)"),
                ("slope_hi", "97.5% bootstrap quantile"),
                ("intercept", "intercept of the least-squares fit of ln n_median against ln d"),
                ("dlogd_ratio", "max/min of n_median/(d ln d) over the fitted d: 1 means exactly d ln d"),
                ("fitted_d_values", "number of d values in the fit"),
                ("legend", "legend label of the case, with its fitted slope"),
            ],
        ),
    ]
}

/// `mcm.population`.
pub fn population() -> Vec<TableDoc> {
    vec![
        TableDoc::new(
            "coefficients",
            &[
                ("t", "diffusion time of the OU noising"),
                ("c2_u", "coefficient of m_u^2 in L(m_u, 0) - L(0, 0) (independent latents)"),
                ("c2_v", "coefficient of m_v^2 in L(0, m_v) - L(0, 0): zero, v is whitened"),
                ("c4_v", "coefficient of m_v^4 in L(0, m_v) - L(0, 0)"),
                ("c1_v_coupled", "coefficient of m_v in L(m_u_given, m_v) - L(m_u_given, 0), coupled latents"),
                ("abs_c2_u", "|c2_u|"),
                ("abs_c4_v", "|c4_v|"),
                ("t_c2_u_sign_change", "t at which c_2^u changes sign (u repels below, attracts above)"),
            ],
        ),
        TableDoc::new(
            "landscape",
            &[
                ("latents", "independent or coupled"),
                ("m_u", "overlap with u"),
                ("m_v", "overlap with v"),
                ("excess_loss", "population loss minus the loss of alpha x_t, at overlaps (m_u, m_v) on the unit disc"),
            ],
        ),
        TableDoc::new(
            "exponents",
            &[
                ("case", "direction (and condition) whose exponent is measured"),
                ("case_id", "index of the case"),
                ("activation", "activation g"),
                ("k_series", "smallest k with c_k != 0 (relative tolerance 1e-4 of the largest |c_k|, k <= 8); NaN: the loss does not depend on the overlap"),
                ("k_measured", "log-log slope of |L(m) - L(0)| for m in [0.01, 0.05]"),
                ("c_k", "the coefficient c_k at k = k_series; learnable only if negative"),
            ],
        ),
        TableDoc::new(
            "exponent_curves",
            &[
                ("case", "direction (and condition) of the curve"),
                ("m", "overlap along the case's direction"),
                ("abs_dL", "|L(m) - L(0)| along the case's direction (other overlap fixed)"),
                ("case_id", "index of the case"),
            ],
        ),
        TableDoc::new(
            "summary",
            &[
                ("t", "diffusion time of the landscape and exponents"),
                ("c2_u", "coefficient of m_u^2 at t"),
                ("c4_v", "coefficient of m_v^4 at t"),
                ("t_c2_u_sign_change", "t at which c_2^u changes sign (u repels below, attracts above)"),
                ("optimum_m_u_independent", "m_u at the population-loss minimum, independent latents"),
                ("optimum_m_v_independent", "m_v at the population-loss minimum, independent latents"),
                ("optimum_m_u_coupled", "m_u at the population-loss minimum, coupled latents"),
                ("optimum_m_v_coupled", "m_v at the population-loss minimum, coupled latents"),
            ],
        ),
    ]
}
