//! The tables the CIFAR-10 and U-Net stage kinds write, with every column's
//! definition (see `mcm_tables.rs`).

use e2h_engine::TableDoc;

const T: &str = "DDPM noise level, 1-based: alpha_bar_t = prod_{s<=t} (1 - beta_s), linear beta 1e-4..0.02, T = 1000";

/// `cifar.gaussian_model`.
pub fn gaussian_model() -> Vec<TableDoc> {
    vec![TableDoc::new(
        "spectrum",
        &[
            ("index", "rank of the eigenvalue (0: largest)"),
            ("eigenvalue", "eigenvalues of the training covariance (pixels in [-1, 1]), decreasing, clipped at 0"),
        ],
    )]
}

/// `cifar.wiener_baseline`.
pub fn wiener_baseline() -> Vec<TableDoc> {
    vec![TableDoc::new(
        "baseline",
        &[
            ("t", T),
            ("alpha_bar", "alpha_bar_t of the DDPM schedule"),
            ("mmse_analytic", "per-dimension epsilon-MSE of the Wiener denoiser on the Gaussian model: mean_i abar l_i / (abar l_i + 1 - abar)"),
            ("wiener_real", "empirical per-dimension epsilon-MSE of the Wiener denoiser on the real test images"),
            ("wiener_real_se", "its standard error over images"),
            ("wiener_surrogate", "the same on surrogate samples mu + V diag(sqrt l) z, with the same noise draws"),
            ("wiener_surrogate_se", "its standard error"),
        ],
    )]
}

/// `unet.train`.
pub fn unet_train() -> Vec<TableDoc> {
    vec![
        TableDoc::new(
            "losses",
            &[
                ("step", "training steps taken when evaluated (0 = initialisation)"),
                ("set", "real: the first eval_images CIFAR-10 test images; gaussian: as many samples of the Gaussian surrogate (training mean and covariance)"),
                ("denoiser", "unet: the trained network; wiener: the optimal linear denoiser of the Gaussian model (constant in step)"),
                ("t", "DDPM noise level, 1-based"),
                ("loss", "per-dimension epsilon-MSE, mean over images; the same noise draws for both sets and both denoisers"),
                ("se", "standard error of the mean over images"),
                ("loss_lo", "loss - se"),
                ("loss_hi", "loss + se"),
                ("n", "images in the estimate"),
            ],
        ),
        TableDoc::new(
            "training",
            &[
                ("step", "training steps taken at the evaluation"),
                ("train_loss_mean", "mean training batch loss over the steps since the previous evaluation (NaN at step 0)"),
                ("train_loss_steps", "training steps averaged in train_loss_mean"),
            ],
        ),
        TableDoc::new(
            "wiener",
            &[
                ("t", "DDPM noise level, 1-based"),
                ("alpha_bar", "alpha_bar_t of the DDPM schedule"),
                ("mmse_analytic", "the Wiener denoiser's expected loss on the Gaussian model (what wiener_gaussian estimates)"),
                ("wiener_real", "the Wiener denoiser's epsilon-MSE on the evaluation's real test images"),
                ("wiener_real_se", "its standard error"),
                ("wiener_gaussian", "the same on the evaluation's surrogate samples"),
                ("wiener_gaussian_se", "its standard error"),
            ],
        ),
    ]
}

/// `unet.crossings`.
pub fn unet_crossings() -> Vec<TableDoc> {
    vec![TableDoc::new(
        "crossings",
        &[
            ("t", "DDPM noise level, 1-based"),
            ("wiener_real", "the Wiener denoiser's loss on the real test images"),
            ("wiener_real_se", "its standard error"),
            ("wiener_gaussian", "the Wiener denoiser's loss on the surrogate samples"),
            ("crossing_step", "first evaluated step at which the real-image loss is below the real-image Wiener loss by more than z combined standard errors (null: never within the run)"),
            ("real_at_crossing", "the real-image loss at crossing_step"),
            ("final_step", "last evaluated step"),
            ("final_real", "the real-image loss at final_step"),
            ("final_gaussian", "the surrogate loss at final_step"),
            ("early_max_abs_z", "max over steps <= early_steps of |loss_real - loss_gaussian| in combined standard errors"),
            ("real_max_below_wiener_z", "max over steps of (Wiener - loss_real) on real images, in combined standard errors"),
            ("gaussian_max_below_wiener_z", "max over steps of (Wiener - loss_gaussian) on the surrogate, in combined standard errors"),
        ],
    )]
}
