from feature_platform.cli import main

main()
