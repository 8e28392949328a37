fn main() {
    // sqlx::migrate! embeds the files at compile time: rebuild when one is added or changed.
    println!("cargo:rerun-if-changed=migrations");
}
