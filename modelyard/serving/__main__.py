from modelyard.serving.server import main

main()
