//! The real `d8-desktop` window under Xvfb with Mesa's software OpenGL: it
//! opens, finds a cluster announcing itself over mDNS (on loopback only),
//! draws it, and its screenshot is saved as a PNG. Prints how long the
//! window took to appear and the app's memory once idle (figures, not
//! assertions: this machine is shared).
//!
//! Needs Xvfb, xwd and xdotool (Debian: xvfb, x11-apps, xdotool); without
//! them the test says so and passes, unless `D8_REQUIRE_GUI_TEST` is set
//! (`.ci/run` sets it and installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/it/loopback.rs"]
#[allow(dead_code)]
mod loopback;

use loopback::free_port;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_display() -> u32 {
    (90..400)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .expect("a free X display number")
}

/// An image decoded from xwd's format (X11's XWDFile.h: a header of 25
/// big-endian 32-bit fields, the window name, the colormap, then ZPixmap
/// rows). Only the 24/32-bit TrueColor layout Xvfb uses is read.
struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

fn decode_xwd(b: &[u8]) -> Result<Image, String> {
    let field = |i: usize| -> Result<u32, String> {
        b.get(i * 4..i * 4 + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| "short header".to_owned())
    };
    let (header_size, version, format) = (field(0)?, field(1)?, field(2)?);
    if version != 7 || format != 2 {
        return Err(format!(
            "not an XWD v7 ZPixmap (version {version}, format {format})"
        ));
    }
    let (width, height) = (field(4)?, field(5)?);
    let byte_order = field(7)?;
    let bpp = field(11)?;
    let bytes_per_line = field(12)? as usize;
    let masks = [field(14)?, field(15)?, field(16)?];
    let ncolors = field(19)? as usize;
    if bpp != 32 {
        return Err(format!("{bpp} bits per pixel"));
    }
    let start = header_size as usize + ncolors * 12;
    let need = start + bytes_per_line * height as usize;
    if b.len() < need {
        return Err(format!("{} bytes, {need} needed", b.len()));
    }
    let mut rgb = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height as usize {
        let row = &b[start + y * bytes_per_line..];
        for x in 0..width as usize {
            let p = &row[x * 4..x * 4 + 4];
            let v = if byte_order == 0 {
                u32::from_le_bytes([p[0], p[1], p[2], p[3]])
            } else {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]])
            };
            for m in masks {
                rgb.push(((v & m) >> m.trailing_zeros()) as u8);
            }
        }
    }
    Ok(Image { width, height, rgb })
}

fn write_png(img: &Image, path: &Path) {
    let file = std::fs::File::create(path).expect("png file");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), img.width, img.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().expect("png header");
    w.write_image_data(&img.rgb).expect("png data");
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn d8_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_d8-desktop"))
        .with_file_name(format!("d8{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_window_opens_under_xvfb_with_software_gl_and_shows_the_cluster_found_over_mdns() {
    let missing: Vec<&str> = ["Xvfb", "xwd", "xdotool"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("D8_REQUIRE_GUI_TEST").is_none(),
            "D8_REQUIRE_GUI_TEST is set but {missing:?} are missing (apt-get install xvfb x11-apps xdotool)"
        );
        eprintln!("skipped: {missing:?} not installed (apt-get install xvfb x11-apps xdotool)");
        return;
    }
    assert!(
        d8_bin().is_file(),
        "{} missing: run cargo test --workspace",
        d8_bin().display()
    );
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();

    // A cluster announcing itself over mDNS on loopback only (no traffic
    // leaves this machine).
    let port = free_port();
    let serve_log = std::fs::File::create(dir.join("serve.log")).expect("log");
    let _orch = Kill(
        Command::new(d8_bin())
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--mdns-interface",
                "lo",
                "--name",
                "d8-kitchen-pi",
            ])
            .arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.join("orchestrator"))
            .stdin(Stdio::null())
            .stdout(serve_log.try_clone().expect("clone"))
            .stderr(serve_log)
            .spawn()
            .expect("d8 serve"),
    );

    let display = free_display();
    let _x = Kill(
        Command::new("Xvfb")
            .arg(format!(":{display}"))
            .args([
                "-screen",
                "0",
                "1024x768x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb"),
    );
    let x = |cmd: &mut Command| {
        cmd.env("DISPLAY", format!(":{display}"))
            .output()
            .expect("x tool")
    };
    // Ready when a client gets an answer (its socket appears a moment
    // before it accepts). `-noreset`: an X server resets when its last
    // client leaves, refusing connections meanwhile; this probe is one.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !x(Command::new("xdotool").arg("getdisplaygeometry"))
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "Xvfb :{display} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let app_log = std::fs::File::create(dir.join("app.log")).expect("log");
    let mut app = Kill(
        Command::new(env!("CARGO_BIN_EXE_d8-desktop"))
            .env("DISPLAY", format!(":{display}"))
            .env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("LIBGL_ALWAYS_SOFTWARE", "1")
            .env("D8_MDNS_INTERFACE", "lo")
            // No desktop keyring here: keys would go to the owner-only file.
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(app_log.try_clone().expect("clone"))
            .stderr(app_log)
            .spawn()
            .expect("d8-desktop"),
    );
    let window = loop {
        let out = x(Command::new("xdotool").args(["search", "--name", "^d8$"]));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !id.is_empty() {
            break id;
        }
        let exited = app.0.try_wait().expect("try_wait");
        assert!(
            exited.is_none() && started.elapsed() < Duration::from_secs(20),
            "no window ({}): {}",
            exited.map_or("none within 20 s".into(), |c| format!("the app ended, {c}")),
            std::fs::read_to_string(dir.join("app.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let to_window = started.elapsed();

    // mDNS rounds take 1.5 s, then /health is asked: the list fills in.
    std::thread::sleep(Duration::from_secs(4));
    let out = x(Command::new("xwd").args(["-silent", "-id", window.as_str()]));
    assert!(
        out.status.success(),
        "xwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = decode_xwd(&out.stdout).expect("xwd image");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("desktop-window.png");
    write_png(&img, &shot);
    if let Some(to) = std::env::var_os("D8_DESKTOP_SCREENSHOT") {
        std::fs::copy(&shot, to).expect("copy screenshot");
    }
    let rss = rss_kib(app.0.id());
    eprintln!(
        "d8-desktop: window in {} ms; idle RSS {} MiB; screenshot {}",
        to_window.as_millis(),
        rss.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        shot.display()
    );

    // The window is the size the app asks for and was drawn: many colours
    // (text, buttons, the blue Start button), not one cleared background.
    assert_eq!((img.width, img.height), (780, 580), "window size");
    let mut colours = std::collections::HashSet::new();
    for p in img.rgb.chunks(3) {
        colours.insert([p[0], p[1], p[2]]);
    }
    assert!(
        colours.len() > 50,
        "only {} colours: nothing drawn?",
        colours.len()
    );
    let blue = img
        .rgb
        .chunks(3)
        .filter(|p| p[0] < 0x40 && (0x60..0x80).contains(&p[1]) && p[2] > 0xd0)
        .count();
    assert!(
        blue > 500,
        "the Start button's blue is missing ({blue} pixels)"
    );
    let log = std::fs::read_to_string(dir.join("app.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
