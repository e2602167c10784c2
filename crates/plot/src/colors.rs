//! Colour palette (Okabe–Ito, colour-blind safe) and the viridis colour map.

/// Okabe–Ito palette, reordered so the most distinct colours come first and
/// yellow (poor on white) comes last. Indices wrap around.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (0x00, 0x72, 0xB2), // blue
    (0xD5, 0x5E, 0x00), // vermillion
    (0x00, 0x9E, 0x73), // bluish green
    (0xCC, 0x79, 0xA7), // reddish purple
    (0xE6, 0x9F, 0x00), // orange
    (0x56, 0xB4, 0xE9), // sky blue
    (0x00, 0x00, 0x00), // black
    (0xF0, 0xE4, 0x42), // yellow
];

/// Palette colour `index` (wrapping).
pub fn palette_color(index: usize) -> (u8, u8, u8) {
    PALETTE[index % PALETTE.len()]
}

/// Viridis anchor colours at t = 0, 1/16, …, 1 (matplotlib's `viridis`).
const VIRIDIS: [(u8, u8, u8); 17] = [
    (68, 1, 84),
    (72, 26, 108),
    (71, 47, 125),
    (65, 68, 135),
    (57, 86, 140),
    (49, 104, 142),
    (42, 120, 142),
    (35, 136, 142),
    (31, 152, 139),
    (34, 168, 132),
    (53, 183, 121),
    (84, 197, 104),
    (122, 209, 81),
    (165, 219, 54),
    (210, 226, 27),
    (236, 229, 27),
    (253, 231, 37),
];

/// Viridis colour for `t` in `[0, 1]` (clamped; NaN maps to 0).
pub fn viridis(t: f64) -> (u8, u8, u8) {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let n = VIRIDIS.len() - 1;
    let f = t * n as f64;
    let i = (f.floor() as usize).min(n - 1);
    let w = f - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let lerp = |p: u8, q: u8| {
        (p as f64 + (q as f64 - p as f64) * w)
            .round()
            .clamp(0.0, 255.0) as u8
    };
    (lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends() {
        assert_eq!(viridis(0.0), (68, 1, 84));
        assert_eq!(viridis(1.0), (253, 231, 37));
        assert_eq!(viridis(f64::NAN), (68, 1, 84));
        assert_eq!(viridis(7.0), (253, 231, 37));
    }

    #[test]
    fn palette_wraps() {
        assert_eq!(palette_color(8), palette_color(0));
    }
}
