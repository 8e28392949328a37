//! Unit tests of the configuration: zero configuration, each source's precedence, the
//! messages of bad values, environment variable names, and the checks of sections.
//!
//! Owns: those tests (each in a `figment::Jail`, so files and variables stay in the test).
//!
//! Must not: read the real environment or files outside the jail.

// figment::Jail closures return figment::Error, which is large; fine in tests.
#![allow(clippy::result_large_err)]

use super::*;

#[test]
fn zero_configuration_is_valid() {
    figment::Jail::expect_with(|_| {
        let c = Config::load(None, BTreeMap::new()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
        assert_eq!(c.tenant_url("acme"), "http://127.0.0.1:8080/t/acme/");
        Ok(())
    });
}

#[test]
fn renderer_section() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("PUG_RENDERER_MODE", "off");
        jail.set_env("PUG_RENDERER_LISTEN", "0.0.0.0:9081");
        let c = Config::load(None, BTreeMap::new()).unwrap();
        assert_eq!(c.renderer.mode, RendererMode::Off);
        assert_eq!(c.renderer_url(), "http://127.0.0.1:9081/render");
        jail.set_env("PUG_RENDERER_MODE", "on");
        jail.set_env("PUG_RENDERER_LISTEN", "127.0.0.1:8080");
        let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("its own port"), "{err}");
        jail.set_env("PUG_RENDERER_MODE", "sometimes");
        assert!(Config::load(None, BTreeMap::new()).is_err());
        jail.set_env("PUG_RENDERER_MODE", "off");
        jail.set_env("PUG_RENDERER_PAGE_REUSE", "50");
        assert_eq!(
            Config::load(None, BTreeMap::new())
                .unwrap()
                .renderer
                .page_reuse,
            50
        );
        jail.set_env("PUG_RENDERER_PAGE_REUSE", "0");
        let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
        assert!(
            err.contains("renderer.page_reuse must be at least 1"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn file_then_env_then_flags() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
                "pug.toml",
                "listen = \"127.0.0.1:9000\"\n[process]\ngrafana_bin = \"/from/file\"\nport_min = 30000\nport_max = 30100\n",
            )?;
        jail.set_env("PUG_PROCESS_GRAFANA_BIN", "/from/env");
        jail.set_env("PUG_URL", "http://ignored");
        let mut flags = BTreeMap::new();
        flags.insert("listen".to_owned(), serde_json::json!("127.0.0.1:9100"));
        let c = Config::load(None, flags).unwrap();
        assert_eq!(c.process.grafana_bin, "/from/env");
        assert_eq!(c.process.port_min, 30000);
        assert_eq!(c.listen.port(), 9100);
        Ok(())
    });
}

#[test]
fn bad_values_are_explained() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("pug.toml", "[gateway]\nmode = \"host\"\n")?;
        let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("gateway.domain"), "{err}");
        jail.create_file("pug.toml", "bogus = 1\n")?;
        let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        // Every problem at once, not one per restart.
        jail.create_file(
                "pug.toml",
                "[controller]\nconcurrency = 0\n[docker]\nimage = \"grafana\"\n[gateway]\nmode = \"host\"\n",
            )?;
        let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
        for setting in ["controller.concurrency", "docker.image", "gateway.domain"] {
            assert!(err.contains(setting), "{setting} missing from: {err}");
        }
        Ok(())
    });
    let err = Config::load(Some(Path::new("/nonexistent/pug.toml")), BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"));
}

#[test]
fn every_setting_has_an_env_name() {
    let names = env_names();
    assert_eq!(names["PUG_PROCESS_GRAFANA_BIN"], "process.grafana_bin");
    assert_eq!(names["PUG_GRAFANA_DATABASE_URL"], "grafana_database.url");
    assert_eq!(names["PUG_DATA_DIR"], "data_dir");
}

#[test]
fn process_isolation_settings() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None, BTreeMap::new()).unwrap();
        assert_eq!(c.process.isolation, IsolationMode::Auto);
        jail.set_env("PUG_PROCESS_ISOLATION", "required");
        jail.set_env("PUG_PROCESS_TENANT_UID_BASE", "300000");
        let c = Config::load(None, BTreeMap::new()).unwrap();
        assert_eq!(c.process.isolation, IsolationMode::Required);
        assert_eq!(c.process.tenant_uid_base, 300_000);
        jail.set_env("PUG_PROCESS_ISOLATION", "maybe");
        assert!(Config::load(None, BTreeMap::new()).is_err());
        jail.set_env("PUG_PROCESS_ISOLATION", "off");
        for (base, count) in [
            ("0", "10"),
            ("999", "10"),
            ("4294967000", "1000"),
            ("200000", "0"),
        ] {
            jail.set_env("PUG_PROCESS_TENANT_UID_BASE", base);
            jail.set_env("PUG_PROCESS_TENANT_UID_COUNT", count);
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            assert!(
                err.contains("process.tenant_uid_base"),
                "{base} {count}: {err}"
            );
        }
        Ok(())
    });
}

#[test]
fn docker_image_needs_a_version_placeholder() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("pug.toml", "[docker]\nimage = \"grafana/grafana:latest\"\n")?;
        let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("{version}"), "{err}");
        jail.create_file(
            "pug.toml",
            "backend = \"swarm\"\n[docker]\nimage = \"registry.example.com/grafana:{version}\"\n",
        )?;
        let c = Config::load(None, BTreeMap::new()).unwrap();
        assert_eq!(c.backend, Backend::Swarm);
        jail.create_file("pug.toml", "[docker]\nnamespace = \"Bad_Name\"\n")?;
        let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("docker.namespace"), "{err}");
        assert_eq!(env_names()["PUG_DOCKER_IMAGE"], "docker.image");
        Ok(())
    });
}

#[test]
fn host_mode_urls() {
    let mut c = Config::default();
    c.gateway.mode = GatewayMode::Host;
    c.gateway.domain = "g.example.com".into();
    c.gateway.public_url = "https://g.example.com".into();
    assert_eq!(c.tenant_url("acme"), "https://acme.g.example.com/");
}

#[test]
fn renderer_swarm_section() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None, BTreeMap::new()).unwrap();
        assert_eq!(
            c.renderer.swarm.replicas, 0,
            "the embedded renderer by default"
        );
        /// The variables set, and what the error must say (`None`: valid).
        type Case = (
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (
                &[
                    ("PUG_BACKEND", "swarm"),
                    ("PUG_LISTEN", "0.0.0.0:8080"),
                    ("PUG_RENDERER_SWARM_REPLICAS", "2"),
                    ("PUG_RENDERER_SWARM_IMAGE", "registry.example.com/pug:1"),
                ],
                None,
            ),
            (
                &[
                    ("PUG_BACKEND", "swarm"),
                    ("PUG_RENDERER_SWARM_REPLICAS", "1"),
                    ("PUG_RENDERER_SWARM_IMAGE", "pug:1"),
                    ("PUG_RENDERER_SWARM_PUG_URL", "http://tasks.pug_pug:8080"),
                ],
                None,
            ),
            (
                &[
                    ("PUG_BACKEND", "swarm"),
                    ("PUG_LISTEN", "0.0.0.0:8080"),
                    ("PUG_RENDERER_SWARM_REPLICAS", "1"),
                ],
                Some("needs renderer.swarm.image (PUG_RENDERER_SWARM_IMAGE)"),
            ),
            (
                &[
                    ("PUG_RENDERER_SWARM_REPLICAS", "1"),
                    ("PUG_RENDERER_SWARM_IMAGE", "pug:1"),
                ],
                Some("is a swarm backend setting"),
            ),
            (
                &[
                    ("PUG_BACKEND", "swarm"),
                    ("PUG_RENDERER_SWARM_REPLICAS", "1"),
                    ("PUG_RENDERER_SWARM_IMAGE", "pug:1"),
                ],
                Some("listen (127.0.0.1:8080) is loopback"),
            ),
            (
                &[
                    ("PUG_BACKEND", "swarm"),
                    ("PUG_RENDERER_SWARM_REPLICAS", "1"),
                    ("PUG_RENDERER_SWARM_IMAGE", "pug:1"),
                    ("PUG_RENDERER_SWARM_PUG_URL", "tasks.pug_pug:8080"),
                ],
                Some("renderer.swarm.pug_url \"tasks.pug_pug:8080\" is not an http(s) URL"),
            ),
            (
                &[
                    ("PUG_BACKEND", "swarm"),
                    ("PUG_LISTEN", "0.0.0.0:8080"),
                    ("PUG_RENDERER_SWARM_REPLICAS", "65"),
                    ("PUG_RENDERER_SWARM_IMAGE", "pug:1"),
                ],
                Some("must be at most 64"),
            ),
        ];
        let names = [
            "PUG_BACKEND",
            "PUG_LISTEN",
            "PUG_RENDERER_SWARM_REPLICAS",
            "PUG_RENDERER_SWARM_IMAGE",
            "PUG_RENDERER_SWARM_PUG_URL",
        ];
        for (vars, want) in cases {
            for name in names {
                jail.set_env(name, "");
            }
            jail.set_env("PUG_BACKEND", "process");
            jail.set_env("PUG_LISTEN", "127.0.0.1:8080");
            jail.set_env("PUG_RENDERER_SWARM_REPLICAS", "0");
            for (name, value) in vars.iter() {
                jail.set_env(name, value);
            }
            let loaded = Config::load(None, BTreeMap::new());
            match want {
                None => {
                    let c = loaded.unwrap_or_else(|e| panic!("{vars:?}: {e}"));
                    assert!(c.renderer.swarm.replicas >= 1, "{vars:?}");
                }
                Some(want) => {
                    let err = loaded.expect_err(want).to_string();
                    assert!(err.contains(want), "{vars:?}: {err}");
                }
            }
        }
        Ok(())
    });
}
