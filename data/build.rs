fn main() {
    sat_plugin_build::link_libtorch()
}
