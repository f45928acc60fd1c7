//! The report's chart: one horizontal bar per ratio (higher is better), a line at 1×, and a
//! tick at each target; bars below their target are red.

use std::path::Path;

use plotters::prelude::*;

use super::report::{Bar, Section};

const WIDTH: u32 = 960;
const LEFT: i32 = 330;
const RIGHT_MARGIN: i32 = 90;
const TOP: i32 = 56;
const ROW: i32 = 30;

pub fn draw(sections: &[Section], path: &Path) -> Result<(), String> {
    let bars: Vec<&Bar> = sections.iter().flat_map(|s| &s.bars).collect();
    let height = (TOP + ROW * bars.len() as i32 + 40).max(120) as u32;
    let err = |e: DrawingAreaErrorKind<_>| format!("draw {}: {e:?}", path.display());
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = bars
        .iter()
        .flat_map(|b| [b.ratio, b.target.unwrap_or(0.0)])
        .filter(|r| r.is_finite())
        .fold(1.2_f64, f64::max)
        * 1.05;
    let span = WIDTH as i32 - LEFT - RIGHT_MARGIN;
    let x = |r: f64| LEFT + ((r.max(0.0) / max) * f64::from(span)) as i32;
    let font = ("sans-serif", 14).into_font();
    let title = ("sans-serif", 18).into_font();
    root.draw(&Text::new(
        "hvarch vs baselines, same run (ratio, higher is better; | = target)",
        (10, 14),
        title,
    ))
    .map_err(err)?;
    let bottom = TOP + ROW * bars.len() as i32;
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + ROW * i as i32;
        root.draw(&Text::new(bar.label.clone(), (10, y + 8), font.clone()))
            .map_err(err)?;
        if !bar.ratio.is_finite() {
            root.draw(&Text::new("n/a", (LEFT + 4, y + 8), font.clone()))
                .map_err(err)?;
            continue;
        }
        let below = bar.target.is_some_and(|t| bar.ratio < t);
        let color = if below {
            RGBColor(214, 69, 65)
        } else {
            RGBColor(70, 130, 180)
        };
        root.draw(&Rectangle::new(
            [(LEFT, y + 5), (x(bar.ratio), y + ROW - 5)],
            color.filled(),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            format!("{:.2}×", bar.ratio),
            (x(bar.ratio) + 6, y + 8),
            font.clone(),
        ))
        .map_err(err)?;
        if let Some(t) = bar.target {
            root.draw(&PathElement::new(
                vec![(x(t), y + 1), (x(t), y + ROW - 1)],
                BLACK.stroke_width(3),
            ))
            .map_err(err)?;
        }
    }
    root.draw(&PathElement::new(
        vec![(x(1.0), TOP - 4), (x(1.0), bottom + 4)],
        RGBColor(120, 120, 120).stroke_width(1),
    ))
    .map_err(err)?;
    root.draw(&Text::new("1×", (x(1.0) - 6, bottom + 10), font))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
