//! Pixel-space geometry: clipping of segments, polylines and polygons to a
//! rectangle, dash patterns, and marching-squares contours.
//!
//! plotters does not clip to the plotting area, so everything is clipped here
//! before it reaches a backend; this also keeps huge coordinates away from the
//! rasteriser.

/// A point in pixel space.
pub type P = (f64, f64);

/// An axis-aligned pixel rectangle with `x0 < x1`, `y0 < y1` (y grows down).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl Rect {
    pub fn width(&self) -> f64 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> f64 {
        self.y1 - self.y0
    }

    pub fn contains(&self, p: P, tol: f64) -> bool {
        p.0 >= self.x0 - tol && p.0 <= self.x1 + tol && p.1 >= self.y0 - tol && p.1 <= self.y1 + tol
    }
}

fn finite(p: P) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

/// Liang–Barsky clipping of the segment `a`–`b` to `r`.
pub fn clip_segment(a: P, b: P, r: &Rect) -> Option<(P, P)> {
    if !finite(a) || !finite(b) {
        return None;
    }
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let mut t0: f64 = 0.0;
    let mut t1: f64 = 1.0;
    for (p, q) in [
        (-dx, a.0 - r.x0),
        (dx, r.x1 - a.0),
        (-dy, a.1 - r.y0),
        (dy, r.y1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
            if t0 > t1 {
                return None;
            }
        }
    }
    Some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

/// Clip a polyline to `r`, returning the visible pieces (each ≥ 2 points).
pub fn clip_polyline(pts: &[P], r: &Rect) -> Vec<Vec<P>> {
    let mut out: Vec<Vec<P>> = Vec::new();
    let mut cur: Vec<P> = Vec::new();
    for w in pts.windows(2) {
        match clip_segment(w[0], w[1], r) {
            Some((a, b)) => {
                let joined = cur
                    .last()
                    .is_some_and(|l| (l.0 - a.0).abs() < 1e-9 && (l.1 - a.1).abs() < 1e-9);
                if !joined {
                    if cur.len() >= 2 {
                        out.push(std::mem::take(&mut cur));
                    }
                    cur.clear();
                    cur.push(a);
                }
                cur.push(b);
            }
            None => {
                if cur.len() >= 2 {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    if cur.len() >= 2 {
        out.push(cur);
    }
    out
}

/// Sutherland–Hodgman clipping of a polygon to `r`.
pub fn clip_polygon(pts: &[P], r: &Rect) -> Vec<P> {
    if pts.len() < 3 || !pts.iter().all(|&p| finite(p)) {
        return Vec::new();
    }
    type Inside = fn(P, &Rect) -> bool;
    type Cross = fn(P, P, &Rect) -> P;
    let edges: [(Inside, Cross); 4] = [
        (|p, r| p.0 >= r.x0, |a, b, r| lerp_x_fn(a, b, r.x0)),
        (|p, r| p.0 <= r.x1, |a, b, r| lerp_x_fn(a, b, r.x1)),
        (|p, r| p.1 >= r.y0, |a, b, r| lerp_y_fn(a, b, r.y0)),
        (|p, r| p.1 <= r.y1, |a, b, r| lerp_y_fn(a, b, r.y1)),
    ];
    let mut poly = pts.to_vec();
    for (inside, cross) in edges {
        if poly.is_empty() {
            break;
        }
        let input = std::mem::take(&mut poly);
        let mut prev = input[input.len() - 1];
        for &p in &input {
            let (pi, qi) = (inside(p, r), inside(prev, r));
            if pi {
                if !qi {
                    poly.push(cross(prev, p, r));
                }
                poly.push(p);
            } else if qi {
                poly.push(cross(prev, p, r));
            }
            prev = p;
        }
    }
    if poly.len() < 3 { Vec::new() } else { poly }
}

fn lerp_x_fn(a: P, b: P, x: f64) -> P {
    let t = if b.0 == a.0 {
        0.0
    } else {
        (x - a.0) / (b.0 - a.0)
    };
    (x, a.1 + t * (b.1 - a.1))
}

fn lerp_y_fn(a: P, b: P, y: f64) -> P {
    let t = if b.1 == a.1 {
        0.0
    } else {
        (y - a.1) / (b.1 - a.1)
    };
    (a.0 + t * (b.0 - a.0), y)
}

/// Split a polyline into dashes of length `dash` separated by `gap` pixels.
pub fn dash_polyline(pts: &[P], dash: f64, gap: f64) -> Vec<Vec<P>> {
    let mut out = Vec::new();
    if pts.len() < 2 || dash.is_nan() || dash <= 0.0 || gap.is_nan() || gap < 0.0 {
        return out;
    }
    let mut on = true;
    let mut left = dash;
    let mut cur: Vec<P> = vec![pts[0]];
    for w in pts.windows(2) {
        let (mut a, b) = (w[0], w[1]);
        let mut seg = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        if !seg.is_finite() {
            continue;
        }
        // Bounded: every iteration consumes at least min(dash, gap) pixels.
        let mut guard = 0usize;
        while seg > left && guard < 100_000 {
            guard += 1;
            let t = left / seg;
            let m = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            if on {
                cur.push(m);
                if cur.len() >= 2 {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            } else {
                cur = vec![m];
            }
            seg -= left;
            a = m;
            on = !on;
            left = if on { dash } else { gap.max(1e-3) };
        }
        left -= seg;
        if on {
            cur.push(b);
        }
    }
    if on && cur.len() >= 2 {
        out.push(cur);
    }
    out
}

/// Marching squares: segments of the iso-line `level` of `z[j][i]` sampled at
/// pixel positions `(xs[i], ys[j])`. Cells with a non-finite corner are skipped.
pub fn contour_segments(
    xs: &[Option<f64>],
    ys: &[Option<f64>],
    z: &[Vec<f64>],
    level: f64,
) -> Vec<(P, P)> {
    let mut out = Vec::new();
    if !level.is_finite() {
        return out;
    }
    let get = |i: usize, j: usize| -> Option<(P, f64)> {
        let v = *z.get(j)?.get(i)?;
        let (x, y) = ((*xs.get(i)?)?, (*ys.get(j)?)?);
        v.is_finite().then_some(((x, y), v))
    };
    let interp = |(pa, va): (P, f64), (pb, vb): (P, f64)| -> P {
        let t = if vb == va {
            0.5
        } else {
            ((level - va) / (vb - va)).clamp(0.0, 1.0)
        };
        (pa.0 + t * (pb.0 - pa.0), pa.1 + t * (pb.1 - pa.1))
    };
    for j in 0..ys.len().saturating_sub(1) {
        for i in 0..xs.len().saturating_sub(1) {
            let (Some(a), Some(b), Some(c), Some(d)) =
                (get(i, j), get(i + 1, j), get(i + 1, j + 1), get(i, j + 1))
            else {
                continue;
            };
            // Corners in order a (i,j), b (i+1,j), c (i+1,j+1), d (i,j+1).
            let idx = (a.1 > level) as u8
                | ((b.1 > level) as u8) << 1
                | ((c.1 > level) as u8) << 2
                | ((d.1 > level) as u8) << 3;
            let ab = || interp(a, b);
            let bc = || interp(b, c);
            let cd = || interp(c, d);
            let da = || interp(d, a);
            match idx {
                0 | 15 => {}
                1 | 14 => out.push((da(), ab())),
                2 | 13 => out.push((ab(), bc())),
                3 | 12 => out.push((da(), bc())),
                4 | 11 => out.push((bc(), cd())),
                6 | 9 => out.push((ab(), cd())),
                7 | 8 => out.push((cd(), da())),
                5 | 10 => {
                    let centre = (a.1 + b.1 + c.1 + d.1) / 4.0 > level;
                    // idx 5: a and c above. Centre above joins them.
                    if (idx == 5) == centre {
                        out.push((ab(), bc()));
                        out.push((cd(), da()));
                    } else {
                        out.push((da(), ab()));
                        out.push((bc(), cd()));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rect = Rect {
        x0: 0.0,
        y0: 0.0,
        x1: 10.0,
        y1: 10.0,
    };

    #[test]
    fn segment() {
        assert_eq!(
            clip_segment((-5.0, 5.0), (15.0, 5.0), &R),
            Some(((0.0, 5.0), (10.0, 5.0)))
        );
        assert_eq!(clip_segment((-5.0, -5.0), (-1.0, 20.0), &R), None);
        assert_eq!(clip_segment((f64::NAN, 0.0), (1.0, 1.0), &R), None);
        assert!(clip_segment((-1e300, 5.0), (1e300, 5.0), &R).is_some());
    }

    #[test]
    fn polyline_pieces() {
        let pieces = clip_polyline(&[(1.0, 1.0), (5.0, 20.0), (9.0, 1.0)], &R);
        assert_eq!(pieces.len(), 2);
    }

    #[test]
    fn polygon() {
        let p = clip_polygon(
            &[(-5.0, -5.0), (15.0, -5.0), (15.0, 15.0), (-5.0, 15.0)],
            &R,
        );
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|&q| R.contains(q, 1e-9)));
        assert!(clip_polygon(&[(20.0, 20.0), (30.0, 20.0), (30.0, 30.0)], &R).is_empty());
    }

    #[test]
    fn dashes() {
        let d = dash_polyline(&[(0.0, 0.0), (100.0, 0.0)], 6.0, 4.0);
        assert_eq!(d.len(), 10);
        assert!(dash_polyline(&[(0.0, 0.0)], 6.0, 4.0).is_empty());
    }

    #[test]
    fn contour() {
        let xs = [Some(0.0), Some(1.0)];
        let ys = [Some(0.0), Some(1.0)];
        let z = vec![vec![0.0, 1.0], vec![0.0, 1.0]];
        let s = contour_segments(&xs, &ys, &z, 0.5);
        assert_eq!(s.len(), 1);
        assert!((s[0].0.0 - 0.5).abs() < 1e-12 && (s[0].1.0 - 0.5).abs() < 1e-12);
    }
}
