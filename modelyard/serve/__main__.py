from modelyard.serve.server import main

main()
