//! wg-quick / wg config file parser.
